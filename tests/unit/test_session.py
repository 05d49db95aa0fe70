"""GuidanceSession and WeakBranch bookkeeping: counters of routed/missed steps, caches keyed right, nothing held."""
import copy

import pytest
import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.checkpoint import checkpoint_deltas
from pg_ext.config import Settings
from pg_ext.deltas import DenseDelta, LowRankDelta
from pg_ext.session import GuidanceSession

from tiny_unet import TinyUNet, perturbed


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = TinyUNet().eval()
    return base, perturbed(base, 0.05).eval()


def _conds(seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 5, 12, generator=gen), torch.randn(1, 5, 12, generator=gen)


def _session(models):
    base, tuned = models
    session = GuidanceSession(Settings(enabled=True, omega=0.3))
    deltas = checkpoint_deltas(tuned, dict(base.named_parameters())).deltas
    assert session.begin_pass(tuned, deltas, {}, [], None) is not None
    return session, deltas


def _call(model, context, rows=None):
    rows = context.shape[0] if rows is None else rows
    x = torch.randn(rows, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return model(x, torch.tensor([500] * rows), context=context)


@torch.no_grad()
def test_steps_routed_and_missed_are_counted_across_passes_until_end_job(models):
    tuned = models[1]
    cond, uncond = _conds()
    session, _ = _session(models)
    session.step(True, cond, uncond)
    _call(tuned, torch.cat([cond, uncond]))  # A1111's layout: weak row found
    assert (session.steps_routed, session.steps_missed) == (1, 0)
    session.step(True, cond, uncond)
    _call(tuned, torch.cat([cond, torch.randn_like(uncond)]))  # an extension rewrote the uncond rows
    assert (session.steps_routed, session.steps_missed) == (1, 1)
    session.step(True, cond, uncond)
    _call(tuned, cond)  # NGMS / skip early CFG: the host ran no uncond rows, nothing was missed
    session.step(False, cond, uncond)
    _call(tuned, torch.cat([cond, torch.randn_like(uncond)]))  # outside [start, end]: plain CFG by choice
    session.step(True, cond, uncond)
    _call(tuned, cond)  # batch cond/uncond off: the step's rows come in two calls
    _call(tuned, uncond)
    assert (session.steps_routed, session.steps_missed) == (2, 1)
    session.end_pass()  # e.g. the hires pass starts: the counts stay with the job
    assert (session.steps_routed, session.steps_missed) == (2, 1)
    session2_pass = session.begin_pass(tuned, _session(models)[1], {}, [], None)
    assert session2_pass is not None
    session.step(True, cond, uncond)
    _call(tuned, torch.cat([torch.randn_like(cond), torch.randn_like(uncond)]))
    session.close()
    assert (session.steps_routed, session.steps_missed) == (2, 2)
    session.end_job()
    assert (session.steps_routed, session.steps_missed) == (0, 0)


@torch.no_grad()
def test_steps_whose_call_has_no_conditioning_count_as_missed(models):
    tuned = models[1]
    cond, uncond = _conds()
    session, _ = _session(models)
    session.router.context_of = lambda args, kwargs: None  # a host whose call carries no readable context
    session.step(True, cond, uncond)
    _call(tuned, torch.cat([cond, uncond]))
    session.close()
    assert (session.steps_routed, session.steps_missed) == (0, 1)


@torch.no_grad()
def test_end_of_pass_releases_every_device_copy_of_cached_deltas(models):
    """Bug 4: the base cache keeps the deltas between jobs; their per-run device copies must not stay."""
    tuned = models[1]
    cond, uncond = _conds()
    # float64 deltas on a float32 model: the placed copies are real copies, as on a GPU
    deltas = {layer: [DenseDelta(torch.randn_like(layer.weight, dtype=torch.float64) * 0.01)]
              for layer in tuned.modules() if isinstance(layer, (nn.Linear, nn.Conv2d))}
    session = GuidanceSession(Settings(enabled=True, omega=0.3))
    session.begin_pass(tuned, deltas, {}, [], None, exact_weights=False)
    session.step(True, cond, uncond)
    _call(tuned, torch.cat([cond, uncond]))
    placed = [d._placed for ds in deltas.values() for d in ds]
    assert all(p.tensors for p in placed)
    session.end_pass()
    assert all(p.key == () and p.tensors == () for p in placed)


def test_low_rank_delta_releases_its_copy_on_detach():
    layer = nn.Linear(6, 4)
    delta = LowRankDelta(torch.randn(2, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), 0.5)
    with torch.no_grad(), WeakBranch(0.2, {layer: [delta]}) as branch:
        branch.mask = torch.tensor([False, True])
        layer(torch.randn(2, 6))
        assert delta._placed.tensors
    assert delta._placed.tensors == ()


@torch.no_grad()
@pytest.mark.parametrize("kind", ["linear", "conv", "groupnorm"])
def test_exact_weights_follow_a_dtype_change_within_a_pass(kind):
    """Bug 7: fp16/fp8 layers or upcast options change the dtype mid-pass; the θ_ω cache must follow."""
    torch.manual_seed(2)
    make = {"linear": lambda: nn.Linear(8, 6), "conv": lambda: nn.Conv2d(8, 6, 3, padding=1),
            "groupnorm": lambda: nn.GroupNorm(2, 8)}[kind]
    base = make()
    tuned = copy.deepcopy(base)
    for p in tuned.parameters():
        p.add_(torch.randn_like(p) * 0.3)
    delta = DenseDelta(tuned.weight - base.weight, tuned.bias - base.bias)
    weak = copy.deepcopy(tuned)
    for p, b in zip(weak.parameters(), base.parameters()):
        p.copy_(torch.lerp(b, p, 0.4))
    x = torch.randn(2, 8, 5, 5) if kind != "linear" else torch.randn(2, 3, 8)
    mask = torch.tensor([False, True])
    branch = WeakBranch(0.4, {tuned: [delta]}, exact_weights=True)
    with branch:
        for dtype in (torch.float32, torch.float64, torch.float32):
            tuned.to(dtype)
            branch.mask = mask
            got = tuned(x.to(dtype))
            assert got.dtype == dtype
            torch.testing.assert_close(got[1:], weak.to(dtype)(x[1:].to(dtype)), rtol=1e-5, atol=1e-5)
            branch.mask = None
            torch.testing.assert_close(got[:1], tuned(x[:1].to(dtype)), rtol=1e-6, atol=1e-6)
    assert branch.cache_bytes() == 0 and not tuned._forward_hooks
