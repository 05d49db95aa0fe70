"""pg_hosts/forge.py against our double of Forge 2's contract (tests/host/forge_double).

Same reference as the reForge tests: the selected LoRAs at ω × strength in patchers of their own,
merged by the host's loader, the weak prompt encoded and the uncond entry run alone with them.
The model's Linear layers are Forge's (an nn.Module, not an nn.Linear), so a layer PG would not
recognise leaves its rows uncorrected and the comparison fails.
"""
import os
import sys
import types

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.join(HERE, "forge_double"), os.path.join(HERE, "..", "unit")) if p not in sys.path]

from backend.modules.k_model import KModel  # noqa: E402
from backend.operations import ForgeOperations, as_forge_linears  # noqa: E402
from backend.patcher.base import ModelPatcher  # noqa: E402
from backend.sampling.sampling_function import calc_cond_uncond_batch  # noqa: E402
from fork_objects import ForgeObjects, ForkModel, cfg_inputs, random_factors, two_loras  # noqa: E402
from pg_ext.config import Settings, SettingsError  # noqa: E402
from pg_ext.deltas import LowRankDelta  # noqa: E402
from pg_ext.session import GuidanceSession  # noqa: E402
from pg_hosts import forge  # noqa: E402

SCALE, B = 5.0, 2



class ForgeModel(ForkModel):
    """What forge_loader puts on sd_model, around our double's patchers; `apply_loras` = networks.py:117-126."""

    def __init__(self, chunks_per_call=None):
        super().__init__(as_forge_linears, ModelPatcher, KModel, chunks_per_call)

    def apply_loras(self, loras):
        unet, clip = self.forge_objects_original.unet, self.forge_objects_original.clip
        for filename, patches, strength in loras:
            unet, clip = unet.clone(), clip.clone()
            unet.add_patches(filename=filename, patches=patches, strength_patch=strength)
            clip.patcher.add_patches(filename=filename, patches=patches, strength_patch=strength)
        self.forge_objects = ForgeObjects(unet, clip)
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()


def patches(model, seed, kind, only=lambda key: True):
    roots = {"diffusion_model.": model.forge_objects_original.unet.model.diffusion_model,
             "": model.forge_objects_original.clip.cond_stage_model}
    out = {}
    for key, up, down, gen in random_factors(roots, seed, only, (ForgeOperations.Linear, nn.Conv2d)):
        if kind == "lora":
            out[key] = ("lora", (up, down, 1.0, None, None))
        else:
            w2a, w2b = torch.randn(up.shape[0], 2, generator=gen) * 0.3, torch.randn(2, down[0].numel(), generator=gen) * 0.3
            out[key] = ("loha", (up.flatten(1), down.flatten(1), 2.0, w2a, w2b))
    return out


def _networks(monkeypatch):
    nets = [types.SimpleNamespace(name=n, network_on_disk=types.SimpleNamespace(filename=f"/loras/{n}.safetensors"))
            for n in ("subject", "style")]
    monkeypatch.setitem(sys.modules, "networks", types.SimpleNamespace(loaded_networks=nets))


def _loras(model):
    return two_loras(model, patches)


def _inputs():
    return cfg_inputs(B)


def run_pg(model, omega, field="", fail=False):
    x, sigma, cond_ids, neg_ids = _inputs()
    model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()  # processing.py:1373
    before = model.forge_objects.unet
    clip = model.forge_objects.clip
    clip.patcher.load()
    cond = clip.cond_stage_model(cond_ids)
    session = GuidanceSession(Settings.from_values({"enabled": True, "omega": omega, "loras": field}))

    def encode_weak():
        model.forge_objects.clip.patcher.load()
        return model.forge_objects.clip.cond_stage_model(neg_ids)

    plan = forge.begin_pass(types.SimpleNamespace(sd_model=model), session, encode_weak, {})
    patcher = model.forge_objects.unet
    try:
        patcher.load()
        weak = plan.weak_conditioning if plan is not None else None
        uncond = weak if weak is not None else clip.cond_stage_model(neg_ids)
        session.step(True, cond, uncond)
        if fail:
            raise RuntimeError("interrupted")
        c, u = calc_cond_uncond_batch(patcher.model, [{"c_crossattn": cond}], [{"c_crossattn": uncond}], x, sigma, {})
    finally:
        session.close()
    return u + (c - u) * SCALE, plan, before


def reference(model, omega, selected):
    x, sigma, cond_ids, neg_ids = _inputs()
    original = model.forge_objects_original

    def chain(factor):
        unet, clip = original.unet.clone(), original.clip.clone()
        for filename, pt, s in _loras(model):
            s = s * factor if any(filename.endswith(f"/{n}.safetensors") for n in selected) else s
            unet.add_patches(filename=filename, patches=pt, strength_patch=s)
            clip.patcher.add_patches(filename=filename, patches=pt, strength_patch=s)
        return unet, clip

    unet, clip = chain(omega)
    clip.patcher.load()
    unet.load()
    weak_ctx = clip.cond_stage_model(neg_ids)
    u = calc_cond_uncond_batch(unet.model, [], [{"c_crossattn": weak_ctx}], x, sigma, {})[1]
    unet, clip = chain(1.0)
    clip.patcher.load()
    unet.load()
    c = calc_cond_uncond_batch(unet.model, [{"c_crossattn": clip.cond_stage_model(cond_ids)}], [], x, sigma, {})[0]
    return u + (c - u) * SCALE


def _assert_nothing_left(model, before):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert model.forge_objects.unet is before


@pytest.mark.parametrize("omega, field, selected", [(0.0, "", {"subject", "style"}), (0.5, "subject", {"subject"}),
                                                    (0.3, "style", {"style"})])
@pytest.mark.parametrize("chunks_per_call", [None, 1])
def test_weak_rows_equal_the_loras_at_omega_times_strength(monkeypatch, omega, field, selected, chunks_per_call):
    model = ForgeModel(chunks_per_call)
    model.apply_loras(_loras(model))
    _networks(monkeypatch)
    out, plan, before = run_pg(model, omega, field)
    torch.testing.assert_close(out, reference(model, omega, selected), atol=2e-5, rtol=1e-5)
    plain, _, _ = run_pg(model, 1.0)
    assert (out - plain).abs().max() > 1e-3
    _assert_nothing_left(model, before)


def test_forge_linears_are_corrected_low_rank(monkeypatch):
    """Also when nothing registered Forge's Linear before (a fresh process: patcher_deltas must do it)."""
    import pg_ext.deltas

    monkeypatch.setattr(pg_ext.deltas, "_LINEAR_LIKE", [])
    model = ForgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch)
    nets = sys.modules["networks"].loaded_networks
    patcher = model.forge_objects.unet
    deltas = forge.patcher_deltas(patcher, forge.selected_entries(patcher, nets[:1]), 0.5)
    unet = patcher.model.diffusion_model
    assert isinstance(unet.time_embed[0], ForgeOperations.Linear) and not isinstance(unet.time_embed[0], nn.Linear)
    assert all(isinstance(d, LowRankDelta) for d in deltas[unet.time_embed[0]])


def test_an_error_leaves_no_hook_no_clone_and_the_patches_as_they_were(monkeypatch):
    model = ForgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch)
    after = model.forge_objects_after_applying_lora
    snapshot = {k: {key: list(v) for key, v in d.items()} for k, d in after.unet.lora_patches.items()}
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pg(model, 0.3, fail=True)
    _assert_nothing_left(model, after.unet)
    assert {k: {key: list(v) for key, v in d.items()} for k, d in after.unet.lora_patches.items()} == snapshot


def test_quantized_weights_stop_pg_with_a_reason(monkeypatch):
    model = ForgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch)
    layer = model.forge_objects_original.unet.model.diffusion_model.time_embed[0]
    layer.scale_weight = torch.ones(())  # an fp8-scaled layer
    with pytest.raises(NotImplementedError, match="time_embed.0.weight.*fp8"):
        run_pg(model, 0.3)
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet)


def test_unknown_lora_is_an_input_error(monkeypatch):
    model = ForgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch)
    with pytest.raises(SettingsError, match="'loras'"):
        run_pg(model, 0.3, "nobody")
