"""pg_hosts/forge_neo.py against our double of Forge Neo's contract (tests/host/neo_double).

Neo is Forge 2's `backend/` (same sampling function and row marks) with ComfyUI's model patcher (LoRAs
as flat per-key entries of six fields, one clone per LoRA, no file name kept). The reference is the
slow, obviously-right way: the selected LoRAs loaded again at ω × strength in patchers of their own,
merged by the host's function, the weak prompt encoded with that text encoder and the uncond entry
run alone with that UNet. PG must give the same CFG output from the one batched call, offline and
online LoRAs alike, and leave the shared patchers as they were.

Forge's double also names its package `backend`: the Neo double is imported once into modules of its
own and put in `sys.modules` for each test only (fixture `neo_backend`).
"""
import os
import sys
import types

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
NEO_DOUBLE = os.path.join(HERE, "neo_double")
for path in (os.path.join(HERE, "double"), os.path.join(HERE, "..", "unit")):
    if path not in sys.path:
        sys.path.insert(0, path)

from fork_objects import (ForgeObjects, ForkModel, cfg_inputs, install_networks, lora_file, lora_hash,  # noqa: E402
                          random_factors, two_loras)
from pg_ext.config import Settings, SettingsError  # noqa: E402
from pg_ext.deltas import DenseDelta, LowRankDelta  # noqa: E402
from pg_ext.session import GuidanceSession  # noqa: E402
from pg_hosts import comfy, forge_neo  # noqa: E402

SCALE, B = 5.0, 2


def _is_backend(name):
    return any(name == top or name.startswith(top + ".") for top in ("backend", "modules_forge"))


def _import_neo_double():
    """Neo's double as {module name: module}, imported without disturbing an already imported `backend`."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_backend(k)}
    sys.path.insert(0, NEO_DOUBLE)
    try:
        import backend.memory_management  # noqa: F401
        import backend.modules.k_model  # noqa: F401
        import backend.operations  # noqa: F401
        import backend.patcher.base  # noqa: F401
        import backend.sampling.sampling_function  # noqa: F401,E501
        import modules_forge.packages.comfy.utils  # noqa: F401
        return {k: sys.modules.pop(k) for k in list(sys.modules) if _is_backend(k)}
    finally:
        sys.path.remove(NEO_DOUBLE)
        sys.modules.update(saved)


NEO = _import_neo_double()
KModel = NEO["backend.modules.k_model"].KModel
ForgeOperations, as_neo_layers = NEO["backend.operations"].ForgeOperations, NEO["backend.operations"].as_neo_layers
ModelPatcher = NEO["backend.patcher.base"].ModelPatcher
LoRAAdapter, LoHaAdapter = NEO["backend.patcher.lora"].LoRAAdapter, NEO["backend.patcher.lora"].LoHaAdapter
calc_cond_uncond_batch = NEO["backend.sampling.sampling_function"].calc_cond_uncond_batch


@pytest.fixture(autouse=True)
def neo_backend(monkeypatch):
    """The adapter imports `backend.patcher.lora` when it runs: it must find Neo's."""
    for name in [k for k in sys.modules if _is_backend(k)]:
        monkeypatch.delitem(sys.modules, name)
    for name, module in NEO.items():
        monkeypatch.setitem(sys.modules, name, module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NeoModel(ForkModel):
    """What Neo's diffusion engine puts on sd_model; `apply_loras` = networks.py `load_networks`."""

    def __init__(self, chunks_per_call=None):
        super().__init__(as_neo_layers, ModelPatcher, KModel, chunks_per_call)

    def apply_loras(self, loras, online=False):
        """loras: [(file, patches, strength)]: recorded in `current_lora_hash`, then loaded in order (:120-150)."""
        self.lora_files = {f: pt for f, pt, _ in loras}
        self.current_lora_hash = lora_hash([[f, s, s, online] for f, _, s in loras])
        self.forge_objects = chain(self.forge_objects_original, loras, online)
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()


def load_lora_for_models(model, clip, lora, strength_model, strength_clip, filename="default", online_mode=False):
    """The contract of Neo's `networks.load_lora_for_models` (sd_forge_lora/networks.py:39-80 at de2193d):
    the LoRA's keys split into UNet keys, CLIP keys and unmatched ones; nothing at all when more than half
    match nothing; per side, a clone with the patches only when the LoRA has keys for it, and the clone
    dropped when more than a quarter of them were skipped by `add_patches`. (Here a LoRA's "file" holds
    patches keyed like the models' state dicts; a UNet key is one under `diffusion_model.`.)"""
    unet_keys = set(model.model.state_dict())
    clip_keys = set(clip.cond_stage_model.state_dict())
    lora_unet = {k: v for k, v in lora.items() if k.startswith("diffusion_model.")}
    lora_clip = {k: v for k, v in lora.items() if k in clip_keys and k not in lora_unet}
    unmatched = len(lora) - len(lora_unet) - len(lora_clip)
    if unmatched / len(lora) > 0.5:
        return model, clip
    if lora_unet:
        new_model = model.clone()
        loaded = new_model.add_patches(filename=filename, patches=lora_unet, strength_patch=strength_model,
                                       online_mode=online_mode)
        if (len(lora_unet) - len([k for k in loaded if k in unet_keys])) / len(lora_unet) <= 0.25:
            model = new_model
    if lora_clip:
        new_clip = clip.clone()
        loaded = new_clip.patcher.add_patches(filename=filename, patches=lora_clip, strength_patch=strength_clip,
                                              online_mode=online_mode)
        if (len(lora_clip) - len(loaded)) / len(lora_clip) <= 0.25:
            clip = new_clip
    return model, clip


def chain(original, loras, online=False):
    """load_networks from the original patchers: one host load per LoRA, in prompt order."""
    unet, clip = original.unet, original.clip
    for filename, patches, strength in loras:
        unet, clip = load_lora_for_models(unet, clip, dict(patches), strength, strength, filename=filename,
                                          online_mode=online)
    return ForgeObjects(unet, clip)


def patches(model, seed, kind, only=lambda key: True):
    roots = {"diffusion_model.": model.forge_objects_original.unet.model.diffusion_model,
             "": model.forge_objects_original.clip.cond_stage_model}
    out = {}
    for key, up, down, gen in random_factors(roots, seed, only):
        if kind == "lora":
            out[key] = LoRAAdapter(up, down, 1.0)
        else:
            w2a, w2b = torch.randn(up.shape[0], 2, generator=gen) * 0.3, torch.randn(2, down[0].numel(), generator=gen) * 0.3
            out[key] = LoHaAdapter(up.flatten(1), down.flatten(1), 2.0, w2a, w2b)
    return out


def _networks(monkeypatch, model, names=("subject", "style")):
    return install_networks(monkeypatch, names, model.lora_files, load_lora_for_models)


def _loras(model):
    return two_loras(model, patches)


def _inputs():
    return cfg_inputs(B)


def _encode(clip, ids):
    """get_learned_conditioning: load the CLIP patcher (merge), encode."""
    clip.patcher.load()
    try:
        return clip.cond_stage_model(ids)
    finally:
        clip.patcher.unpatch_model()


def run_pg(model, omega, field="", fail=False, options=None):
    x, sigma, cond_ids, neg_ids = _inputs()
    model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()  # processing.py:1379
    before = model.forge_objects.unet
    cond = _encode(model.forge_objects.clip, cond_ids)
    session = GuidanceSession(Settings.from_values({"enabled": True, "omega": omega, "loras": field}))
    plan = forge_neo.begin_pass(types.SimpleNamespace(sd_model=model), session,
                                lambda: _encode(model.forge_objects.clip, neg_ids), {})
    patcher = model.forge_objects.unet
    try:
        patcher.load()
        weak = plan.weak_conditioning if plan is not None else None
        uncond = weak if weak is not None else _encode(model.forge_objects.clip, neg_ids)
        session.step(True, cond, uncond)
        if fail:
            raise RuntimeError("interrupted")
        c, u = calc_cond_uncond_batch(patcher.model, [{"c_crossattn": cond}], [{"c_crossattn": uncond}], x, sigma,
                                      options or {})
    finally:
        session.close()
        patcher.unpatch_model()
    return u + (c - u) * SCALE, plan, before


def reference(model, omega, selected, online, loras=None, options=None):
    x, sigma, cond_ids, neg_ids = _inputs()
    loras = _loras(model) if loras is None else loras
    weak = chain(model.forge_objects_original,
                 [(f, pt, s * omega if any(f.endswith(f"/{n}.safetensors") for n in selected) else s)
                  for f, pt, s in loras], online)
    full = chain(model.forge_objects_original, loras, online)
    weak_ctx = _encode(weak.clip, neg_ids)
    weak.unet.load()
    u = calc_cond_uncond_batch(weak.unet.model, [], [{"c_crossattn": weak_ctx}], x, sigma, options or {})[1]
    weak.unet.unpatch_model()
    cond = _encode(full.clip, cond_ids)
    full.unet.load()
    c = calc_cond_uncond_batch(full.unet.model, [{"c_crossattn": cond}], [], x, sigma, options or {})[0]
    full.unet.unpatch_model()
    return u + (c - u) * SCALE


def _weights(model):
    return {k: v.clone() for m in (model.forge_objects_original.unet.model, model.forge_objects_original.clip.cond_stage_model)
            for k, v in m.state_dict().items()}


def _assert_nothing_left(model, before, weights):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
        assert "weight_function" not in vars(module), type(module).__name__
    assert model.forge_objects.unet is before
    now = _weights(model)
    assert all(torch.equal(now[k], weights[k]) for k in weights)


@pytest.mark.parametrize("omega, field, selected", [(0.0, "", {"subject", "style"}), (0.5, "subject", {"subject"}),
                                                    (0.3, "style", {"style"})])
@pytest.mark.parametrize("chunks_per_call, online", [(None, False), (1, False), (None, True)])
def test_weak_rows_equal_the_loras_at_omega_times_strength(monkeypatch, omega, field, selected, chunks_per_call, online):
    model = NeoModel(chunks_per_call)
    weights = _weights(model)
    model.apply_loras(_loras(model), online)
    _networks(monkeypatch, model)
    out, plan, before = run_pg(model, omega, field)
    torch.testing.assert_close(out, reference(model, omega, selected, online), atol=2e-5, rtol=1e-5)
    plain, _, _ = run_pg(model, 1.0)
    assert (out - plain).abs().max() > 1e-3
    _assert_nothing_left(model, before, weights)


def test_six_field_entries_of_a_plain_lora_are_corrected_low_rank(monkeypatch):
    model = NeoModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    after, original = model.forge_objects_after_applying_lora, model.forge_objects_original
    patcher = model.forge_objects.unet
    assert all(len(e) == 6 for entries in patcher.patches.values() for e in entries)
    owners = comfy.lora_owners(model, forge_neo.load_one)
    deltas = forge_neo.patcher_deltas(patcher, comfy.selected_entries(after.unet, original.unet, owners.unet, {0}), 0.5)
    unet = patcher.model.diffusion_model
    assert all(isinstance(d, LowRankDelta) for d in deltas[unet.time_embed[0]])
    # where the style's LoHa shares a key, the subject's difference comes from two host merges
    shared_layer = next(m for m in unet.modules() if any(isinstance(d, DenseDelta) for d in deltas.get(m, [])))
    assert isinstance(shared_layer, (nn.Linear, nn.Conv2d))


def test_an_error_leaves_no_hook_no_clone_and_the_patches_as_they_were(monkeypatch):
    model = NeoModel()
    weights = _weights(model)
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    after = model.forge_objects_after_applying_lora
    snapshot = {key: list(entries) for key, entries in after.unet.patches.items()}
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pg(model, 0.3, fail=True)
    _assert_nothing_left(model, after.unet, weights)
    assert {key: list(entries) for key, entries in after.unet.patches.items()} == snapshot


@pytest.mark.parametrize("mark", ["gguf_cls", "convert_weight"])
def test_quantized_or_converted_weights_stop_pg_with_a_reason(monkeypatch, mark):
    model = NeoModel()
    weights = _weights(model)
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    layer = model.forge_objects_original.unet.model.diffusion_model.time_embed[0]
    setattr(layer.weight if mark == "gguf_cls" else layer, mark, object())
    with pytest.raises(NotImplementedError, match="time_embed.0.weight.*quantized"):
        run_pg(model, 0.3)
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet, weights)


def test_unknown_lora_is_an_input_error(monkeypatch):
    model = NeoModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    with pytest.raises(SettingsError, match="'loras'"):
        run_pg(model, 0.3, "nobody")


# -- LoRAs of every shape users have: Neo's loader decides per LoRA which patchers it clones ----------------

def _subject_plus(model, shape):
    """A full subject LoRA next to a second LoRA of `shape`, as (file, patches, strength) in prompt order."""
    unet_only = lambda k: k.startswith("diffusion_model.")  # noqa: E731
    second = {
        "unet_only": patches(model, 21, "lora", only=unet_only),
        "te_only": patches(model, 22, "lora", only=lambda k: not unet_only(k)),
        # a quarter-plus of its UNet keys name layers this model lacks: Neo keeps no UNet clone for it
        "partly_matching": {**patches(model, 23, "lora"),
                            **{f"diffusion_model.missing{i}.weight": LoRAAdapter(torch.zeros(2, 2), torch.zeros(2, 2), 1.0)
                               for i in range(40)}},
        "mostly_unmatched": {**patches(model, 24, "lora", only=lambda k: "attn" in k),
                             **{f"unknown_{i}.weight": LoRAAdapter(torch.zeros(2, 2), torch.zeros(2, 2), 1.0)
                                for i in range(200)}},
    }[shape]
    return [(lora_file("subject"), patches(model, 11, "lora"), 1.0), (lora_file("second"), second, 0.7)]


@pytest.mark.parametrize("shape", ["unet_only", "te_only", "partly_matching", "mostly_unmatched"])
@pytest.mark.parametrize("field, selected", [("second", {"second"}), ("subject", {"subject"}), ("", {"subject", "second"})])
def test_each_lora_shape_next_to_a_full_one_is_told_apart(monkeypatch, shape, field, selected):
    """Issue 17 item 1: `<lora:subject_unet_only:1> <lora:style:1>` ran as plain CFG with a note in Neo."""
    model = NeoModel()
    loras = _subject_plus(model, shape)
    model.apply_loras(loras)
    _networks(monkeypatch, model, ("subject", "second"))
    weights = _weights(model)
    out, plan, before = run_pg(model, 0.3, field)
    host_loaded_nothing = shape == "mostly_unmatched" and field == "second"  # so θ' has nothing to weaken
    assert (plan is None) == host_loaded_nothing
    torch.testing.assert_close(out, reference(model, 0.3, selected, False, loras), atol=2e-5, rtol=1e-5)
    if not host_loaded_nothing:
        plain, _, _ = run_pg(model, 1.0)
        assert (out - plain).abs().max() > 1e-3
    _assert_nothing_left(model, before, weights)


def test_a_lora_at_strength_zero_is_still_told_apart(monkeypatch):
    model = NeoModel()
    loras = [(lora_file("subject"), patches(model, 11, "lora"), 0.0), (lora_file("second"), patches(model, 21, "lora"), 0.8)]
    model.apply_loras(loras)
    _networks(monkeypatch, model, ("subject", "second"))
    out, plan, _ = run_pg(model, 0.5, "second")
    assert plan.networks == ["second"]
    torch.testing.assert_close(out, reference(model, 0.5, {"second"}, False, loras), atol=2e-5, rtol=1e-5)


# -- MultiDiffusion tiles (sd_forge_multidiffusion/lib_multidiffusion/tiled_diffusion.py:292-350) ----------

def tiles(size: int, tile_batch: int):
    """model_function_wrapper of Neo's MultiDiffusion as its contract reads: the latent cut into size x size
    tiles; per group of `tile_batch` tiles one model call on the tiles concatenated tile-major (each tile
    keeps all of the call's rows), the conditioning repeated once per tile, the call's transformer_options
    (marks and all) passed unchanged; the outputs put back and averaged where tiles overlap."""
    def wrapper(apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        spots = [(i, j) for i in range(0, x.shape[2], size) for j in range(0, x.shape[3], size)]
        out, count = torch.zeros_like(x), torch.zeros_like(x)
        for g in range(0, len(spots), tile_batch):
            group = spots[g:g + tile_batch]
            x_tile = torch.cat([x[:, :, i:i + size, j:j + size] for i, j in group])
            c_tile = dict(c, c_crossattn=c["c_crossattn"].repeat(len(group), 1, 1))
            pieces = apply_model(x_tile, t.repeat(len(group)), **c_tile).chunk(len(group))
            for (i, j), piece in zip(group, pieces):
                out[:, :, i:i + size, j:j + size] += piece
                count[:, :, i:i + size, j:j + size] += 1
        return out / count
    return wrapper


@pytest.mark.parametrize("tile_batch", [1, 2, 4])
def test_multidiffusion_tiles_keep_the_weak_rows(monkeypatch, tile_batch):
    """Issue 17 item 2: with Tile Batch Size > 1 the call is tile-major; chunk-sized guesses picked cond rows."""
    model = NeoModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    options = {"model_function_wrapper": tiles(4, tile_batch)}
    out, plan, before = run_pg(model, 0.3, "subject", options=options)
    torch.testing.assert_close(out, reference(model, 0.3, {"subject"}, False, options=options), atol=2e-5, rtol=1e-5)


def test_a_text_encoder_embedding_is_corrected_in_the_weak_encode(monkeypatch):
    """Issue 18 item 2 (P2c): an Embedding the selected LoRA patches in the text encoder (Anima's LLM adapter,
    an LLM's token table) is weakened in the weak prompt's encode, where every row is weak. Issue 17 item 6
    stopped PG there; before that it was skipped, a silent mix."""
    model = NeoModel()
    weights = _weights(model)
    subject = patches(model, 11, "lora")
    subject["embed.weight"] = LoRAAdapter(torch.randn(64, 2) * 0.3, torch.randn(2, 12) * 0.3, 1.0)
    loras = [(lora_file("subject"), subject, 1.0)]
    model.apply_loras(loras)
    assert "embed.weight" in model.forge_objects_after_applying_lora.clip.patcher.patches  # the host loads it
    _networks(monkeypatch, model, ("subject",))
    out, plan, before = run_pg(model, 0.3)
    torch.testing.assert_close(out, reference(model, 0.3, {"subject"}, False, loras=loras), atol=2e-5, rtol=1e-5)
    _assert_nothing_left(model, before, weights)


class ScaleNorm(nn.Module):
    """A norm of its own with a raw `scale` parameter and no children (Krea 2's RMSNorm, Neo nn/krea.py:147-157)."""

    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim), requires_grad=False)


@pytest.mark.parametrize("where", ["unet_embedding", "raw_parameter"])
def test_a_layer_pg_cannot_correct_stops_pg_with_its_name_not_a_silent_mix(monkeypatch, where):
    """Issue 17 item 6: a layer PG cannot correct (an Embedding whose ids need not have the call's rows first,
    a raw parameter the loader merges, such as Krea's norm `scale`) patched by the selected LoRA was skipped, so
    the weak rows had θ' there and θ_ω elsewhere. Now PG stops for the pass and names it."""
    model = NeoModel()
    unet = model.forge_objects_original.unet.model.diffusion_model
    if where == "unet_embedding":
        unet.label_emb = nn.Embedding(10, 12).requires_grad_(False)
        key, patch, reason = "diffusion_model.label_emb.weight", \
            LoRAAdapter(torch.randn(10, 2) * 0.3, torch.randn(2, 12) * 0.3, 1.0), r"\(Embedding\.weight\).*outside"
    else:
        unet.txt_norm = ScaleNorm(12)
        key, patch, reason = "diffusion_model.txt_norm.scale", ("diff", (torch.randn(12) * 0.1,)), \
            r"txt_norm\.scale \(ScaleNorm\.scale\).*cannot"
    weights = _weights(model)
    subject = patches(model, 11, "lora")
    subject[key] = patch
    model.apply_loras([(lora_file("subject"), subject, 1.0)])
    assert key in model.forge_objects_after_applying_lora.unet.patches  # the host loads it
    _networks(monkeypatch, model, ("subject",))
    with pytest.raises(NotImplementedError, match=reason):
        run_pg(model, 0.3)
    _assert_nothing_left(model, model.forge_objects_after_applying_lora.unet, weights)


def test_a_raw_parameter_neo_never_merges_is_left_alone_as_the_host_leaves_it(monkeypatch):
    """Neo's loader merges only modules whose parameters are all their own (backend/patcher/base.py:512-521):
    a LoRA key on Wan's block `modulation` (a raw parameter of a module with children) sits in the patches
    but θ' and θ_ω both lack it. PG neither corrects it nor stops: the weak rows equal the host's loader at
    ω × strength. (Before: PG stopped for the pass.)"""
    model = NeoModel()
    unet = model.forge_objects_original.unet.model.diffusion_model
    unet.modulation = nn.Parameter(torch.zeros(1, 6, 12), requires_grad=False)
    assert forge_neo.never_merged(model.forge_objects_original.unet.model, "diffusion_model.modulation")
    assert not forge_neo.never_merged(model.forge_objects_original.unet.model, "diffusion_model.time_embed.0.weight")
    weights = _weights(model)
    subject = patches(model, 11, "lora")
    subject["diffusion_model.modulation"] = ("diff", (torch.randn(1, 6, 12) * 0.1,))
    loras = [(lora_file("subject"), subject, 1.0)]
    model.apply_loras(loras)
    assert "diffusion_model.modulation" in model.forge_objects_after_applying_lora.unet.patches
    _networks(monkeypatch, model, ("subject",))
    out, plan, before = run_pg(model, 0.3)
    torch.testing.assert_close(out, reference(model, 0.3, {"subject"}, False, loras=loras), atol=2e-5, rtol=1e-5)
    _assert_nothing_left(model, before, weights)


@pytest.mark.parametrize("state, partial, kept", [("NORMAL_VRAM", False, True), ("LOW_VRAM", False, False),
                                                  ("NO_VRAM", False, False), ("NORMAL_VRAM", True, False)])
def test_low_vram_modes_keep_nothing_on_the_device_between_calls(monkeypatch, state, partial, kept):
    """Issue 17 item 5: keep_on_device was always on, so LoHa/DoRA/full differences sat on the GPU for the
    whole pass outside the host's memory accounting, also under --lowvram/--novram or a partial load."""
    memory = NEO["backend.memory_management"]
    monkeypatch.setattr(memory, "vram_state", memory.VRAMState[state])
    model = NeoModel()
    model.apply_loras(_loras(model))
    _networks(monkeypatch, model)
    monkeypatch.setattr(model.forge_objects_original.unet.model, "model_lowvram", partial, raising=False)
    seen = {}
    original = GuidanceSession.begin_pass

    def spy(self, *args, **kwargs):
        seen["keep_on_device"] = kwargs["keep_on_device"]
        return original(self, *args, **kwargs)
    monkeypatch.setattr(GuidanceSession, "begin_pass", spy)
    out, plan, _ = run_pg(model, 0.3)
    assert seen["keep_on_device"] is kept
    torch.testing.assert_close(out, reference(model, 0.3, {"subject", "style"}, False), atol=2e-5, rtol=1e-5)


def test_original_param_is_the_weight_without_the_prompts_loras(monkeypatch):
    """Base-checkpoint mode reads θ' − θ_base against the checkpoint's own weights, never a LoRA-merged one."""
    model = NeoModel()
    weights = _weights(model)
    model.apply_loras(_loras(model))
    patcher = model.forge_objects_after_applying_lora.unet
    layer = patcher.model.diffusion_model.time_embed[0]
    patcher.load()  # offline LoRAs merged into the parameters, originals in the shared backup
    try:
        assert not torch.equal(layer.weight, weights["diffusion_model.time_embed.0.weight"])
        torch.testing.assert_close(comfy.original_param_of(patcher, layer, "weight"),
                                   weights["diffusion_model.time_embed.0.weight"], atol=0, rtol=0)
        unpatched = patcher.model.diffusion_model.attn.norm  # no LoRA entry on it: the parameter itself
        assert comfy.original_param_of(patcher, unpatched, "weight") is unpatched.weight
    finally:
        patcher.unpatch_model()


@pytest.mark.parametrize("online", [False, True])
def test_fp8_stored_weights_are_corrected_to_the_hosts_own_weak_weights(monkeypatch, online):
    """fp8 storage (a user's fp8 text encoder or "Diffusion in Low Bits" fp8): offline, Neo writes θ' back rounded
    to fp8 (base.py:486-487), and so is its θ_ω; a low-rank correction of the rounded θ' misses that by whole fp8
    steps. PG's weak weight must be the host's own θ_ω: dense D from two merges rounded as the host rounds.
    Online entries merge per forward, unrounded: the low-rank path stays (and is exact)."""
    model = NeoModel()
    fp8 = [m for m in model.forge_objects_original.unet.model.diffusion_model.modules() if isinstance(m, nn.Linear)]
    for layer in fp8:
        layer.weight = nn.Parameter(layer.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    loras = _loras(model)
    model.apply_loras(loras, online)
    _networks(monkeypatch, model)
    after, original = model.forge_objects_after_applying_lora, model.forge_objects_original
    owners = comfy.lora_owners(model, forge_neo.load_one)
    chosen = comfy.selected_entries(after.unet, original.unet, owners.unet, {0})
    weak = chain(original, [(f, pt, s * 0.5 if f.endswith("/subject.safetensors") else s) for f, pt, s in loras], online)
    patcher = after.unet
    patcher.load()
    try:
        deltas = forge_neo.patcher_deltas(patcher, chosen, 0.5)
        patched = {layer: layer.weight.detach().float().clone() for layer in fp8}
    finally:
        patcher.unpatch_model()
    weak.unet.load()
    try:
        host_weak = {layer: layer.weight.detach().float().clone() for layer in fp8}
    finally:
        weak.unet.unpatch_model()
    checked = 0
    for layer in fp8:
        if layer not in deltas:
            continue
        (delta,) = deltas[layer]
        if online:  # a key the subject patches alone stays low rank (where the style's LoHa shares it: dense)
            checked += isinstance(delta, LowRankDelta)
            continue
        assert isinstance(delta, DenseDelta), type(delta).__name__
        torch.testing.assert_close(patched[layer] - 0.5 * delta.weight.float(), host_weak[layer], atol=1e-6, rtol=0)
        assert not torch.equal(patched[layer], host_weak[layer])
        checked += 1
    assert checked >= 2
