"""pg_hosts/reforge.py against our double of reForge's contract (tests/host/reforge_double).

The reference is the slow, obviously-right way: the selected LoRAs loaded again at ω × their UNet and
CLIP strengths, merged by the host's own function, the weak prompt encoded with that text encoder and
the uncond entry run alone with that UNet. PG must give the same CFG output from ONE batched call
(several only where the double's memory forces a split), with the shared patchers left as they were.
"""
import types

import pytest
import torch

from reforge_model import ReforgeModel, lora_patches
from fork_objects import install_networks

from ldm_patched.modules.samplers import calc_cond_batch, sampling_function
from ldm_patched.modules.sd import load_lora_for_models
from pg_ext.config import Settings, SettingsError
from pg_ext.deltas import DenseDelta, LowRankDelta
from pg_ext.session import GuidanceSession
from pg_hosts import comfy, reforge

SCALE = 5.0
B = 2


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _networks(monkeypatch, model, *names):
    """The Lora extension as the adapter meets it, around the double's loader (sd.py load_lora_for_models)."""
    return install_networks(monkeypatch, names, model.lora_files, load_lora_for_models)


def _inputs(seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=gen)
    sigma = torch.full((B,), 400.0)
    cond_ids = torch.randint(0, 64, (B, 7), generator=gen)
    neg_ids = torch.randint(0, 64, (B, 7), generator=gen)
    return x, sigma, cond_ids, neg_ids


def _encode(clip, ids):
    """What reForge's CLIP wrapper does per encode: load the patcher (merge in place), run the transformer."""
    clip.patcher.patch_model()
    return clip.cond_stage_model(ids)


def _loras(model, subject_strength=(1.0, 1.0), style_kind="loha"):
    subject = lora_patches(model, seed=11, kind="lora")
    # the style touches part of the UNet only, some keys shared with the subject (dense path there)
    style = lora_patches(model, seed=12, kind=style_kind, only=lambda k: "attn" in k or k.startswith("diffusion_model.out"))
    return [(subject, *subject_strength), (style, 0.8, 0.8)]


def _host_pass(model, ids):
    """The host's own CFG step with the pass's patcher loaded: cond and uncond through calc_cond_batch."""
    x, sigma, cond_ids, neg_ids = ids
    unet = model.forge_objects.unet
    cond = model.forge_objects.clip.cond_stage_model(cond_ids)
    return unet, cond


def run_pg(model, monkeypatch, omega, loras_field="", weak_prompt="negative", fail=False):
    """One pass as the entry script drives it; returns (denoised, plan, session, patcher before the pass)."""
    x, sigma, cond_ids, neg_ids = _inputs()
    model.reset_for_pass()
    before = model.forge_objects.unet
    clip = model.forge_objects.clip
    cond = _encode(clip, cond_ids)
    host_uncond = _encode(clip, neg_ids)
    clip.patcher.unpatch_model()
    settings = Settings.from_values({"enabled": True, "omega": omega, "loras": loras_field, "weak_prompt": weak_prompt})
    session = GuidanceSession(settings)
    p = types.SimpleNamespace(sd_model=model)
    weak_ids = torch.zeros_like(neg_ids) if weak_prompt == "empty" else neg_ids

    def encode_weak():
        try:
            return _encode(model.forge_objects.clip, weak_ids)
        finally:
            model.forge_objects.clip.patcher.unpatch_model()

    plan = reforge.begin_pass(p, session, encode_weak, {})
    patcher = model.forge_objects.unet
    try:
        patcher.patch_model()
        uncond = plan.weak_conditioning if plan is not None and plan.weak_conditioning is not None else host_uncond
        session.step(True, cond, uncond)
        options = {}
        if fail:
            options = {"transformer_options": {"boom": True}}
            monkeypatch.setattr(patcher.model, "apply_model", _raise_after_first_layers(patcher.model))
        out = sampling_function(patcher.model, x, sigma, [{"c_crossattn": uncond}], [{"c_crossattn": cond}], SCALE, options)
    finally:
        session.close()
        patcher.unpatch_model()
    return out, plan, session, before


def _raise_after_first_layers(base):
    original = base.apply_model

    def apply_model(*args, **kwargs):
        original(*args, **kwargs)  # every hook ran once
        raise RuntimeError("interrupted")
    return apply_model


def reference(model, omega, selected, weak_prompt="negative", loras=None):
    """CFG with the uncond from the LoRAs in `selected` (indices) at ω × strength, in a second call."""
    x, sigma, cond_ids, neg_ids = _inputs()
    weak_loras = [(patches, su * omega, sc * omega) if i in selected else (patches, su, sc)
                  for i, (patches, su, sc) in enumerate(loras)]
    full = ReforgeModelView(model, loras)
    weak = ReforgeModelView(model, weak_loras)
    weak_ids = torch.zeros_like(neg_ids) if weak_prompt == "empty" else neg_ids
    with weak.clip() as clip:
        weak_ctx = clip.cond_stage_model(weak_ids)
    with weak.unet() as unet:
        uncond_pred = calc_cond_batch(unet.model, [None, [{"c_crossattn": weak_ctx}]], x, sigma, {})[1]
    with full.clip() as clip:
        cond_ctx = clip.cond_stage_model(cond_ids)
    with full.unet() as unet:
        cond_pred = calc_cond_batch(unet.model, [[{"c_crossattn": cond_ctx}], None], x, sigma, {})[0]
    return uncond_pred + (cond_pred - uncond_pred) * SCALE


class ReforgeModelView:
    """A LoRA chain built from the same original patchers (same modules), merged only inside `with`."""

    def __init__(self, model, loras):
        from ldm_patched.modules.sd import load_lora_for_models

        unet, clip = model.forge_objects_original.unet, model.forge_objects_original.clip
        for patches, su, sc in loras:
            unet, clip = load_lora_for_models(unet, clip, patches, su, sc)
        self._unet, self._clip = unet, clip

    def unet(self):
        return _Merged(self._unet, self._unet)

    def clip(self):
        return _Merged(self._clip.patcher, self._clip)


class _Merged:
    def __init__(self, patcher, value):
        self.patcher, self.value = patcher, value

    def __enter__(self):
        self.patcher.unpatch_model()  # loading another patcher first restores what the loaded one merged
        self.patcher.patch_model()
        return self.value

    def __exit__(self, *exc):
        self.patcher.unpatch_model()


def _plain(model, monkeypatch):
    _networks(monkeypatch, model, "subject", "style")
    out, _, _, _ = run_pg(model, monkeypatch, omega=1.0)
    return out


def _all_layers(model):
    return list(model.unet_module.modules()) + list(model.text_module.modules())


def _assert_nothing_left(model, before):
    for module in _all_layers(model):
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert model.forge_objects.unet is before  # the pass's clone is gone again
    assert not model.forge_objects_original.unet.backup  # nothing merged stays behind


@pytest.mark.parametrize("omega", [0.0, 0.5])
@pytest.mark.parametrize("chunks_per_call", [None, 1])
@pytest.mark.parametrize("field, selected", [("", {0, 1}), ("subject", {0})])
def test_weak_rows_equal_the_loras_at_omega_times_strength(monkeypatch, omega, chunks_per_call, field, selected):
    model = ReforgeModel(chunks_per_call=chunks_per_call)
    loras = _loras(model)
    model.apply_loras(loras)
    _networks(monkeypatch, model, "subject", "style")
    calls = []
    handle = model.unet_module.register_forward_pre_hook(
        lambda m, a, k: calls.append(list(k["transformer_options"]["cond_or_uncond"])), with_kwargs=True)
    try:
        out, plan, session, before = run_pg(model, monkeypatch, omega, field)
    finally:
        handle.remove()
    want = reference(model, omega, selected, loras=loras)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-5)
    assert calls == ([[1, 0]] if chunks_per_call is None else [[1], [0]])  # one batched call unless memory splits it
    assert plan.text_layers > 0 and plan.unet_layers > 0
    assert session.steps_routed == 1 and session.steps_missed == 0
    assert (out - _plain(model, monkeypatch)).abs().max() > 1e-3  # PG did something: the check can fail
    _assert_nothing_left(model, before)


def test_empty_weak_prompt_is_encoded_at_theta_omega(monkeypatch):
    model = ReforgeModel()
    loras = _loras(model)
    model.apply_loras(loras)
    _networks(monkeypatch, model, "subject", "style")
    out, _, _, _ = run_pg(model, monkeypatch, 0.25, "subject", weak_prompt="empty")
    torch.testing.assert_close(out, reference(model, 0.25, {0}, weak_prompt="empty", loras=loras), atol=2e-5, rtol=1e-5)


def test_non_additive_type_takes_the_hosts_merge_and_stays_exact(monkeypatch):
    """DoRA is not linear in its strength: θ_ω comes from the host's merge at ω × strength, per parameter."""
    model = ReforgeModel()
    loras = _loras(model, style_kind="dora")
    model.apply_loras(loras)
    _networks(monkeypatch, model, "subject", "style")
    out, _, _, _ = run_pg(model, monkeypatch, 0.3, "style")
    torch.testing.assert_close(out, reference(model, 0.3, {1}, loras=loras), atol=2e-5, rtol=1e-5)


def test_plain_lora_alone_on_a_key_is_low_rank_and_mixed_keys_are_dense(monkeypatch):
    model = ReforgeModel()
    loras = _loras(model)
    model.apply_loras(loras)
    _networks(monkeypatch, model, "subject", "style")
    owners = comfy.lora_owners(model, reforge.load_one)
    chosen = comfy.selected_entries(model.forge_objects.unet, model.forge_objects_original.unet, owners.unet, {0})
    deltas = reforge.patcher_deltas(model.forge_objects.unet, chosen, 0.5)
    unet = model.unet_module
    assert all(isinstance(d, LowRankDelta) for d in deltas[unet.conv_in])  # subject only: up/down, no dense weight
    assert all(isinstance(d, DenseDelta) for d in deltas[unet.attn.attn2.to_q])  # subject + LoHa on one key
    assert unet.attn.norm not in deltas  # not patched: nothing to correct


def test_omega_one_is_plain_cfg_bit_for_bit(monkeypatch):
    model = ReforgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model, "subject", "style")
    out, plan, _, _ = run_pg(model, monkeypatch, 1.0)
    x, sigma, cond_ids, neg_ids = _inputs()
    with ReforgeModelView(model, _loras(model)).clip() as clip:
        cond, uncond = clip.cond_stage_model(cond_ids), clip.cond_stage_model(neg_ids)
    with ReforgeModelView(model, _loras(model)).unet() as unet:
        plain = sampling_function(unet.model, x, sigma, [{"c_crossattn": uncond}], [{"c_crossattn": cond}], SCALE, {})
    assert plan is None
    assert torch.equal(out, plain)


def test_an_error_mid_sampling_leaves_no_hook_no_clone_and_the_patches_as_they_were(monkeypatch):
    model = ReforgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model, "subject", "style")
    chain = []
    patcher = model.forge_objects_after_applying_lora.unet
    while patcher is not None:
        chain.append((patcher, {k: list(v) for k, v in patcher.patches.items()}))
        patcher = patcher.parent
    clip_entries = {k: list(v) for k, v in model.forge_objects_after_applying_lora.clip.patcher.patches.items()}
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pg(model, monkeypatch, 0.3, fail=True)
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet)
    for patcher, entries in chain:
        assert patcher.patches == entries and all(a is b for k in entries for a, b in zip(patcher.patches[k], entries[k]))
    assert model.forge_objects_after_applying_lora.clip.patcher.patches == clip_entries


def test_unknown_lora_name_is_an_input_error_naming_the_field(monkeypatch):
    model = ReforgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model, "subject", "style")
    with pytest.raises(SettingsError, match="'loras'.*nobody"):
        run_pg(model, monkeypatch, 0.3, "nobody")
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet)


def test_a_lora_at_strength_zero_adds_no_link_and_the_others_are_still_told_apart(monkeypatch):
    model = ReforgeModel()
    loras = _loras(model, subject_strength=(0.0, 0.0))  # <lora:subject:0>: the host adds no link for it
    model.apply_loras(loras)
    _networks(monkeypatch, model, "subject", "style")
    out, plan, _, _ = run_pg(model, monkeypatch, 0.3, "style")  # was refused: the chain had 1 link for 2 LoRAs
    assert plan is not None and plan.networks == ["style"]
    torch.testing.assert_close(out, reference(model, 0.3, {1}, loras=loras), atol=2e-5, rtol=1e-5)
    out, _, _, _ = run_pg(model, monkeypatch, 0.3, "")
    torch.testing.assert_close(out, reference(model, 0.3, {0, 1}, loras=loras), atol=2e-5, rtol=1e-5)


def test_patches_the_hosts_loader_did_not_add_stop_pg_with_a_reason(monkeypatch):
    model = ReforgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model, "subject", "style")
    extra = model.forge_objects_after_applying_lora.unet.clone()  # another extension adds a patch of its own
    extra.add_patches({"diffusion_model.conv_in.weight": lora_patches(model, seed=5, kind="lora")["diffusion_model.conv_in.weight"]}, 1.0)
    model.forge_objects_after_applying_lora.unet = extra
    with pytest.raises(NotImplementedError, match="conv_in.weight.*not the ones the host's loader adds"):
        run_pg(model, monkeypatch, 0.3, "subject")


def test_rows_come_from_the_calls_marks_and_unmarked_calls_count_as_missed():
    sigmas = {n: torch.full((n,), 3.0) for n in (1, 2)}
    rows = reforge.rows_of_call((torch.zeros(6, 1),), {"transformer_options": {"cond_or_uncond": [0, 1, 0],
                                                                               "sigmas": sigmas[2]}})
    assert rows.weak == (2, 3) and rows.n == 6
    # MultiDiffusion, Tile Batch Size 2: the marked batch of 2 chunks x 1 row, twice, tile-major
    rows = reforge.rows_of_call((torch.zeros(4, 1),), {"transformer_options": {"cond_or_uncond": [0, 1],
                                                                               "sigmas": sigmas[1]}})
    assert rows.weak == (1, 3)
    assert reforge.rows_of_call((torch.zeros(4, 1),), {"transformer_options": {}}) is None
    assert reforge.rows_of_call((torch.zeros(4, 1),), {}) is None
    assert reforge.rows_of_call((torch.zeros(5, 1),), {"transformer_options": {"cond_or_uncond": [1, 0],
                                                                               "sigmas": sigmas[1]}}) is None
    assert reforge.rows_of_call((torch.zeros(4, 1),), {"transformer_options": {"cond_or_uncond": [1, 0]}}) is None

@pytest.mark.parametrize("mark", ["scale_weight", "gguf_cls"])
def test_scaled_fp8_or_quantized_weights_stop_pg_with_a_reason(monkeypatch, mark):
    """Issue 17 item 3: reForge had no guard; a scaled-fp8 layer's stored weight is not what it computes with."""
    model = ReforgeModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model, "subject", "style")
    layer = model.unet_module.conv_in
    if mark == "scale_weight":
        layer.scale_weight = torch.nn.Parameter(torch.tensor(0.5), requires_grad=False)
    else:
        layer.weight.gguf_cls = object()
    with pytest.raises(NotImplementedError, match="conv_in.weight.*quantized or converted"):
        run_pg(model, monkeypatch, 0.3, "subject")
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet)
