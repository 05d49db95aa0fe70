"""End to end on a tiny real UNet with k-diffusion's Euler sampler and CompVisDenoiser (as in the WebUI).

PG through the batched hooks must equal CFG for ω = 1 and the slow two-model reference for ω < 1.
"""
import pytest
import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.checkpoint import CheckpointMismatch, DeltaCache, checkpoint_deltas
from pg_ext.deltas import LowRankDelta
from pg_ext.router import UNetRowRouter

import kdiffusion
from tiny_unet import TinyUNet, materialize_weak, perturbed

K = kdiffusion.load()


class TinyLDM(nn.Module):
    """The ldm contract k-diffusion's CompVisDenoiser needs: alphas_cumprod and apply_model(x, t, cond)."""

    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0))

    def apply_model(self, x, t, cond):
        return self.diffusion_model(x, t, context=cond)


def sample(denoise, seed=0, steps=6):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    wrapper = K.external.CompVisDenoiser(TinyLDM(nn.Identity()))
    sigmas = wrapper.get_sigmas(steps)
    return K.sampling.sample_euler(denoise, noise * sigmas[0], sigmas, disable=True)


def cfg_denoiser(model, cond, uncond, scale, uncond_model=None):
    """A1111's layout: one call with [cond rows, uncond rows], or two models for the reference."""
    wrap = K.external.CompVisDenoiser(TinyLDM(model))
    weak_wrap = None if uncond_model is None else K.external.CompVisDenoiser(TinyLDM(uncond_model))

    def denoise(x, sigma):
        if weak_wrap is None:
            out = wrap(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
            c, u = out.chunk(2)
        else:
            c, u = wrap(x, sigma, cond=cond), weak_wrap(x, sigma, cond=uncond)
        return u + scale * (c - u)
    return denoise


def pg_denoiser(model, deltas, omega, cond, uncond, scale, exact=True):
    router = UNetRowRouter(model, WeakBranch(omega, deltas, exact_weights=exact))
    inner = cfg_denoiser(model, cond, uncond, scale)

    def denoise(x, sigma):
        router.begin_step(cond, uncond)
        return inner(x, sigma)
    return router, denoise


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = TinyUNet().eval()
    return base, perturbed(base, 0.08).eval()


@pytest.fixture
def prompts():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 5, 12, generator=gen), torch.randn(2, 5, 12, generator=gen)


@torch.no_grad()
def test_omega_one_is_plain_cfg(models, prompts):
    base, tuned = models
    cond, uncond = prompts
    deltas = checkpoint_deltas(tuned, dict(base.named_parameters())).deltas
    router, denoise = pg_denoiser(tuned, deltas, 1.0, cond, uncond, 5.0)
    with router:
        pg = sample(denoise)
    assert torch.equal(pg, sample(cfg_denoiser(tuned, cond, uncond, 5.0)))


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("omega", [0.0, 0.4])
@torch.no_grad()
def test_checkpoint_pg_equals_two_model_reference(models, prompts, omega, exact):
    base, tuned = models
    cond, uncond = prompts
    deltas = checkpoint_deltas(tuned, dict(base.named_parameters())).deltas
    router, denoise = pg_denoiser(tuned, deltas, omega, cond, uncond, 5.0, exact)
    with router:
        pg = sample(denoise)
    reference = sample(cfg_denoiser(tuned, cond, uncond, 5.0, materialize_weak(base, tuned, omega)))
    cfg = sample(cfg_denoiser(tuned, cond, uncond, 5.0))
    torch.testing.assert_close(pg, reference, rtol=1e-4, atol=1e-4)
    assert (pg - cfg).abs().max() > 1e-2  # PG really changed the result
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tuned.modules())


@torch.no_grad()
def test_lora_pg_equals_reference_with_lora_at_omega_strength(prompts):
    torch.manual_seed(3)
    base = TinyUNet().eval()
    personalized = TinyUNet().eval()
    personalized.load_state_dict(base.state_dict())
    deltas = {}
    gen = torch.Generator().manual_seed(4)
    for module in personalized.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.shape[0] >= 4:
            rank = 2
            shape = module.weight.shape
            down = torch.randn(rank, *shape[1:], generator=gen) * 0.3
            up = torch.randn(shape[0], rank, *([1, 1] if module.weight.dim() == 4 else []), generator=gen) * 0.3
            delta = LowRankDelta(down, up, scale=0.8)
            with torch.no_grad():
                module.weight.add_(delta.dense().weight)
            deltas[module] = [delta]
    cond, uncond = prompts
    router, denoise = pg_denoiser(personalized, deltas, 0.3, cond, uncond, 6.0, exact=False)
    with router:
        pg = sample(denoise)
    reference = sample(cfg_denoiser(personalized, cond, uncond, 6.0, materialize_weak(base, personalized, 0.3)))
    torch.testing.assert_close(pg, reference, rtol=1e-4, atol=1e-4)


def low_rank_fine_tune(base, rank=2, noise=0.002, seed=5):
    """A fine-tune whose weight updates are low rank plus a little full-rank noise (like DreamBooth's)."""
    tuned = perturbed(base, noise, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.dim() >= 2:
                rows, cols = p.shape[0], p[0].numel()
                update = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, cols, generator=gen)
                p.add_(update.reshape(p.shape) * 0.05 * p.std())
    return tuned


@torch.no_grad()
def test_low_memory_mode_is_close_and_small(models, prompts):
    base = models[0]
    tuned = low_rank_fine_tune(base)
    cond, uncond = prompts
    exact = checkpoint_deltas(tuned, dict(base.named_parameters()))
    low = checkpoint_deltas(tuned, dict(base.named_parameters()), low_memory=True, energy=0.95, budget=0.5)
    assert low.nbytes < exact.nbytes and 0 < low.relative_error < 0.25
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    weak_ref = materialize_weak(base, tuned, 0.3)(x, t, context=uncond)
    with WeakBranch(0.3, low.deltas) as branch:
        branch.mask = torch.ones(2, dtype=torch.bool)
        weak_low = tuned(x, t, context=uncond)
    error = float((weak_low - weak_ref).norm() / weak_ref.norm())
    assert error < 0.1


def test_checkpoint_mismatches_are_explained(models):
    base, tuned = models
    state = {k: v.clone() for k, v in base.state_dict().items()}
    missing = dict(state)
    missing.pop("conv_in.weight")
    with pytest.raises(CheckpointMismatch, match="lacks 1 UNet tensors.*conv_in.weight"):
        checkpoint_deltas(tuned, missing)
    wrong = dict(state, **{"conv_in.weight": torch.zeros(16, 9, 3, 3)})
    with pytest.raises(CheckpointMismatch, match="conv_in.weight.*shape"):
        checkpoint_deltas(tuned, wrong)
    extra = dict(state, **{"label_emb.0.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointMismatch, match="label_emb.0.weight.*different architectures"):
        checkpoint_deltas(tuned, extra)


def test_unsupported_layer_that_differs_is_refused():
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 2))
    base = {k: v + 1 for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match="ConvTranspose2d"):
        checkpoint_deltas(model, base)


def test_delta_cache_reads_once_and_frees(models):
    base, tuned = models
    cache = DeltaCache(size=1)
    build = lambda: checkpoint_deltas(tuned, dict(base.named_parameters()))
    first = cache.get(("a",), build)
    assert cache.get(("a",), build) is first and cache.builds == 1
    cache.get(("b",), build)
    assert len(cache) == 1 and cache.builds == 2
    cache.resize(0)
    assert len(cache) == 0
    cache.get(("a",), build)
    assert len(cache) == 0 and cache.builds == 3  # size 0: nothing kept between jobs
