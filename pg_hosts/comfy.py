"""What the forks share from ComfyUI: per-call row marks, patcher key lookup, the LoRA clone chain.

All three forks' batched CFG function marks every UNet call with `transformer_options["cond_or_uncond"]`,
one int per chunk of equal size, 0 = cond, 1 = uncond (reForge `ldm_patched/modules/samplers.py:322`,
Forge and Forge Neo `backend/sampling/sampling_function.py:161-162,253`), and their Lora extensions are the
top-level module `networks` (reForge `extensions-builtin/Lora/extra_networks_lora.py:2`, Forge and Neo
`extensions-builtin/sd_forge_lora/extra_networks_lora.py:2`). reForge and Neo also keep LoRAs the same
way (ComfyUI's model patcher, one clone per LoRA): the selection and the pass hook below serve both.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import sys
import weakref
from typing import Any, Callable, Optional

from pg_ext.checkpoint import CheckpointMismatch
from pg_ext.router import MarkedRowRouter
from pg_ext.rows import WeakRows
from pg_ext.session import merge_deltas

UNCOND = 1  # the uncond entries' index in the forks' `[cond, uncond]`


def loaded_networks() -> list:
    networks = sys.modules.get("networks")  # the built-in Lora extension; None when it is disabled
    return list(getattr(networks, "loaded_networks", []) or [])


def rows_of_call(args: tuple, kwargs: dict) -> Optional[WeakRows]:
    """The weak (uncond) rows of one UNet call from its `cond_or_uncond` marks; None when it has none.

    Each chunk holds the step's B rows, B = len(`sigmas`), the sampler's per-row timestep that the forks
    put next to the marks (reForge samplers.py:324, Forge/Neo sampling_function.py:254). Knowing B is what
    tells a call of k tiles (MultiDiffusion, tile-major, marks unchanged) from k times larger chunks.
    """
    options = kwargs.get("transformer_options")
    marks = options.get("cond_or_uncond") if isinstance(options, dict) else None
    sigmas = options.get("sigmas") if isinstance(options, dict) else None
    x = args[0] if args else kwargs.get("x")
    if marks is None or x is None or getattr(sigmas, "dim", lambda: 0)() != 1:
        return None  # unmarked, or marks without the step's rows: the layout cannot be read
    return WeakRows.from_chunk_marks(marks, x.shape[0], weak_mark=UNCOND, chunk_rows=sigmas.shape[0])


def marked_router(module, branch) -> MarkedRowRouter:
    return MarkedRowRouter(module, branch, rows_of_call)


def layer_of(root):
    """key ('a.b.weight') -> (module a.b of `root`, 'weight'), or None when the path does not exist."""
    def find(key: str):
        path, _, name = key.rpartition(".")
        try:
            return root.get_submodule(path), name
        except AttributeError:
            return None
    return find


def low_vram(memory_module: str, sd_model) -> bool:
    """Whether the host streams the UNet to the device per call (--lowvram/--novram, or a UNet the patcher
    could load only in part): then PG keeps none of its tensors on the device between calls.

    `memory_module` is the host's memory manager: `vram_state` and `VRAMState` (reForge
    ldm_patched/modules/model_management.py:30-44,349-352; Forge/Neo backend/memory_management.py, Neo
    :50-67,343-364); a partial load sets `model_lowvram` on the patcher's model (Neo base.py:196-197).
    """
    memory = importlib.import_module(memory_module)
    states = getattr(memory, "VRAMState", None)
    streaming = {getattr(states, name, None) for name in ("LOW_VRAM", "NO_VRAM")} - {None}
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    partial = bool(getattr(getattr(patcher, "model", None), "model_lowvram", False))
    return getattr(memory, "vram_state", None) in streaming or partial


QUANTIZED = ("bnb_quantized", "gguf_cls")  # attributes of weights stored quantized (bnb, GGUF)


def plain_layer_of(root):
    """layer_of, refusing weights PG cannot correct: quantized storage, or a per-layer conversion at load
    (`convert_weight`/`convert_bias`: scaled fp8 and mixed-precision layouts in reForge and Neo), whose
    stored value is not the weight the layer computes with."""
    find = layer_of(root)

    def layer(key: str):
        found = find(key)
        if found is None:
            return None
        module, name = found
        weight = getattr(module, name, None)
        scaled = getattr(module, "scale_weight", None) is not None  # reForge's scaled fp8 (ops.py:404-414)
        if any(hasattr(weight, attr) for attr in QUANTIZED) or hasattr(module, f"convert_{name}") or scaled:
            raise NotImplementedError(f"{key} is stored quantized or converted at load (bnb/gguf/scaled fp8): "
                                      "not supported by PG yet")
        return found
    return layer


# -- ComfyUI's model patcher (reForge, Forge Neo): which entries each LoRA added ---------------------------
# Both forks' Lora extensions start from `forge_objects_original` and run every LoRA of the prompt, in
# order, through the host's `load_lora_for_models`, which may clone the UNet and/or the CLIP patcher and
# `add_patches` to the clone (`clone()` copies each key's entry list). Whether a LoRA adds a clone, and to
# which patcher, is the loader's own decision: Neo clones a patcher only when the LoRA has keys for it and
# drops the clone when more than a quarter of them are skipped or more than half match nothing
# (sd_forge_lora/networks.py:48-80 at de2193d); reForge clones nothing for a LoRA at strength 0 on both
# sides (ldm_patched/modules/sd.py:89-104). So PG does not guess the chain's shape: it replays the host's
# loader on the original patchers with the prompt's LoRAs as the host recorded them
# (`sd_model.current_lora_hash`) and notes, per key, which LoRA added each entry. The replay is kept per
# LoRA set (ints only), so a job costs it once per change of the prompt's LoRAs, as the host's own load.

LoadOne = Callable[[Any, Any, tuple], tuple]  # (unet patcher, CLIP, target) -> (unet patcher, CLIP), the host's


@dataclasses.dataclass(frozen=True)
class LoraOwners:
    """Per patcher key, the index (into the host's LoRA targets) of the LoRA that added each new entry."""

    unet: dict
    clip: dict


def lora_targets(sd_model) -> list[tuple]:
    """The prompt's LoRAs as the host loaded them: `[filename, unet strength, te strength, ...]` each, from
    `current_lora_hash` (the `str()` of that list, networks.py `load_networks`)."""
    recorded = getattr(sd_model, "current_lora_hash", None)
    try:
        targets = ast.literal_eval(recorded) if isinstance(recorded, str) and recorded else []
    except (ValueError, SyntaxError):
        targets = None
    if not isinstance(targets, list) or not all(isinstance(t, (list, tuple)) and len(t) >= 3 for t in targets):
        raise NotImplementedError(f"the host's record of the loaded LoRAs cannot be read: {recorded!r}")
    return [tuple(t) for t in targets]


class _OwnersCache:
    """The replay of the current LoRA set: the host's record and weak references to the original patchers
    (an id could be reused by the next model; a strong reference would keep a switched-out model alive)."""

    def __init__(self) -> None:
        self.record, self.unet, self.clip, self.owners = None, None, None, None

    def get(self, record, unet, clip) -> Optional[LoraOwners]:
        same = self.owners is not None and record == self.record and _alive(self.unet) is unet \
            and _alive(self.clip) is clip
        return self.owners if same else None

    def put(self, record, unet, clip, owners: LoraOwners) -> None:
        self.record, self.unet, self.clip, self.owners = record, _ref(unet), _ref(clip), owners


def _ref(obj):
    return None if obj is None else weakref.ref(obj)


def _alive(ref):
    return None if ref is None else ref()


_owners_cache = _OwnersCache()


def lora_owners(sd_model, load_one: LoadOne) -> LoraOwners:
    """Which LoRA added each entry of the UNet and CLIP patcher chains, from a replay of the host's loader."""
    original = sd_model.forge_objects_original
    record = getattr(sd_model, "current_lora_hash", None)
    owners = _owners_cache.get(record, original.unet, original.clip)
    if owners is None:
        owners = _replay(original.unet, original.clip, lora_targets(sd_model), load_one)
        _owners_cache.put(record, original.unet, original.clip, owners)
    return owners


def _replay(unet, clip, targets: list, load_one: LoadOne) -> LoraOwners:
    unet_owners: dict = {}
    clip_owners: dict = {}
    for index, target in enumerate(targets):
        new_unet, new_clip = load_one(unet, clip, target)
        _note_new(unet_owners, unet, new_unet, index)
        if clip is not None and new_clip is not None:
            _note_new(clip_owners, clip.patcher, new_clip.patcher, index)
        unet, clip = new_unet, new_clip
    return LoraOwners(unet_owners, clip_owners)


def _note_new(owners: dict, before, after, index: int) -> None:
    if after is None or after is before:
        return  # the loader kept the patcher: this LoRA added nothing to it
    old = getattr(before, "patches", {})
    for key, entries in after.patches.items():
        added = len(entries) - len(old.get(key, []))
        if added > 0:
            owners.setdefault(key, []).extend([index] * added)


def chosen_targets(targets: list, selected: list) -> set[int]:
    """Indices of the targets loaded from the selected networks' files."""
    files = selected_files(selected)
    return {i for i, target in enumerate(targets) if file_key(target[0]) in files}


def selected_files(selected: list) -> set[str]:
    """The selected networks' files, as `file_key`s."""
    return {file_key(getattr(getattr(n, "network_on_disk", None), "filename", None)) for n in selected} - {None}


def file_key(path) -> Optional[str]:
    """A LoRA file's path as the forks' records compare it (absolute, case as the OS folds it); None if unset."""
    return os.path.normcase(os.path.abspath(path)) if isinstance(path, str) and path else None


def selected_entries(after, original, owners: dict, chosen: set[int]) -> set[int]:
    """Ids of the entries the chosen LoRAs added to one patcher chain (UNet or CLIP), read from `after`.

    Raises NotImplementedError when `after` does not hold exactly the original entries plus the replay's:
    then the patchers were changed by something PG cannot see, and guessing would give a silent mix.
    """
    before = getattr(original, "patches", {}) if original is not None else {}
    patches = getattr(after, "patches", {}) if after is not None else {}
    chosen_ids: set[int] = set()
    for key in set(patches) | set(owners):
        entries, kept, added = patches.get(key, []), len(before.get(key, [])), owners.get(key, [])
        if len(entries) != kept + len(added):
            raise NotImplementedError(f"the LoRA patches on {key} ({len(entries)}) are not the ones the host's "
                                      f"loader adds ({kept} + {len(added)}): another extension changed them?")
        chosen_ids |= {id(e) for e, owner in zip(entries[kept:], added) if owner in chosen}
    return chosen_ids


def unpatched_param(root, module, name: str, saved: Callable[[str], Any]):
    """A parameter of `module` (inside `root`, the patcher's `diffusion_model`) as the checkpoint loaded it,
    without anything a patcher merged in: `saved(key)` is the host's backup of that key ('diffusion_model.'
    + the path in `root`), or None when the host has not patched it (then the parameter itself is the
    loaded value: not patched, or online/low-VRAM patches that merge per forward and leave it as loaded).

    Base-checkpoint mode reads θ' − θ_base against this. A weight stored quantized or converted at load
    (bnb/gguf, scaled fp8: its stored value is not the weight the layer computes with) cannot be read
    exactly: CheckpointMismatch naming the key (a 422 before sampling, as for any base that cannot be used).
    """
    paths = _module_paths.get(id(root))
    if paths is None or paths[0]() is not root:
        paths = (weakref.ref(root), {id(m): n for n, m in root.named_modules()})
        _module_paths.clear()
        _module_paths[id(root)] = paths
    path = paths[1].get(id(module))
    if path is None:
        return getattr(module, name)
    key = f"diffusion_model.{path}.{name}" if path else f"diffusion_model.{name}"
    weight = getattr(module, name)
    scaled = getattr(module, "scale_weight", None) is not None  # reForge's scaled fp8 (ops.py:404-444)
    if any(hasattr(weight, attr) for attr in QUANTIZED) or hasattr(module, f"convert_{name}") or scaled:
        raise CheckpointMismatch(f"the loaded model's UNet tensor '{key[len('diffusion_model.'):]}' is stored "
                                 "quantized or converted at load (bnb/gguf/scaled fp8): base-checkpoint mode "
                                 "cannot read the fine-tune's weights exactly there (load it in fp16/bf16/fp32)")
    found = saved(key)
    return weight if found is None else found


def original_param_of(patcher, module, name: str):
    """A parameter of the patcher's UNet without any LoRA (ComfyUI's patcher: reForge, Neo).

    While the model is patched offline the original is the patcher's `backup[key].weight` (reForge
    model_patcher.py:566-570, Neo base.py:473-474; the dict is shared by every clone, reForge :280, Neo
    :236). reForge also keeps ComfyUI's weight hooks: a hook patch backs the weight it found up in
    `hook_backup[key] = (weight, device)` (reForge :1152-1162), which is the original where no LoRA merged
    into that key first; `get_key_patches` (:526-540) reads the two backups the same way."""
    backup = patcher.backup
    hooks = getattr(patcher, "hook_backup", None) or {}

    def saved(key: str):
        found = backup.get(key)
        if found is not None:
            return found.weight
        hooked = hooks.get(key)
        return hooked[0] if hooked is not None else None
    return unpatched_param(patcher.model.diffusion_model, module, name, saved)


_module_paths: dict = {}  # id(UNet) -> (weak ref to it, {id(module): its path}): one UNet at a time


def stored_dtype_of(patcher):
    """key -> the dtype the patcher's model stores that parameter in (what the host rounds a merge back to)."""
    def dtype(key: str):
        path, _, name = key.rpartition(".")
        try:
            return getattr(patcher.model.get_submodule(path), name).dtype
        except AttributeError:
            return None
    return dtype


def _offline(entries, online_flag: Optional[int]) -> bool:
    """Whether the host merges these entries into the stored weight (Neo: no entry has its online flag)."""
    return online_flag is None or not any(len(e) > online_flag and e[online_flag] for e in entries)


def merged_into_fp8(patcher, online_flag: Optional[int] = None):
    """rounded_on_merge for `patch_deltas`: a key stored in a 1-byte float whose entries the host merges into
    the stored weight (offline), rounding θ' and θ_ω each to fp8 (stochastic rounding seeded by the key, in
    Neo and reForge). Entries merged per forward in the compute dtype (Neo's online mode: the entry's
    `online_flag` field) are not rounded, and the low-rank path stays exact there."""
    import torch

    stored = stored_dtype_of(patcher)

    def rounded(key: str, entries) -> bool:
        dtype = stored(key)
        return (dtype is not None and dtype.is_floating_point  # element_size: torch 2.1 has no dtype.itemsize
                and torch.empty((), dtype=dtype).element_size() == 1 and _offline(entries, online_flag))
    return rounded


def rounding_merge(merge: Callable, patcher, round_to: Callable, online_flag: Optional[int] = None):
    """The host's merge followed by the host's own rounding to the stored dtype (`round_to(value, dtype, key)`),
    in float32 again: θ' and θ_ω as the host writes them, so a dense D is the host's own difference."""
    stored = stored_dtype_of(patcher)

    def merged(entries, weight, key):
        out = merge(entries, weight, key)
        dtype = stored(key)
        if dtype is None or dtype == out.dtype or not dtype.is_floating_point or not _offline(entries, online_flag):
            return out
        return round_to(out, dtype, key).float()
    return merged


def backup_base_of(patcher):
    """key -> the weight without any patch: ComfyUI's `backup[key].weight` while the model is patched."""
    def base(key: str):
        backup = patcher.backup.get(key)
        if backup is not None:
            return backup.weight  # merged offline: the parameter holds θ'
        path, _, name = key.rpartition(".")
        return getattr(patcher.model.get_submodule(path), name)
    return base


def begin_chain_pass(p, session, encode_weak, extra_unet_deltas, patcher_deltas: Callable, load_one: LoadOne,
                     moves_blocks_per_call: Callable):
    """Hook this pass's UNet with the selected LoRAs' θ' − θ_ω from `patcher_deltas(patcher, entry ids, ω)`
    (the host's merge), the entries told apart by `load_one` (the host's loader); undone when the pass ends."""
    session.end_pass()
    sd_model = p.sd_model
    loaded = loaded_networks()
    selected = session.select(loaded)
    omega = session.settings.omega_schedule.lowest()  # D = (θ' − θ_ω)/(1 − ω) here; each step rescales it
    owners = lora_owners(sd_model, load_one)
    chosen = chosen_targets(lora_targets(sd_model), selected)
    original, patcher = sd_model.forge_objects_original, sd_model.forge_objects.unet
    unet_deltas = patcher_deltas(patcher, selected_entries(patcher, original.unet, owners.unet, chosen), omega)
    clip = sd_model.forge_objects.clip
    text_deltas = {}
    if clip is not None:
        original_clip = original.clip.patcher if original.clip is not None else None
        chosen_ids = selected_entries(clip.patcher, original_clip, owners.clip, chosen)
        text_deltas = patcher_deltas(clip.patcher, chosen_ids, omega, every_row_weak=True)  # the weak prompt's encode
    return session.begin_pass(
        patcher.model.diffusion_model, merge_deltas(unet_deltas, extra_unet_deltas), text_deltas,
        [getattr(n, "name", "?") for n in selected], encode_weak,
        exact_weights=False,  # low-VRAM and online modules merge per forward: only the additive correction sees θ'
        empty_prompt=session.settings.weak_prompt == "empty", keep_on_device=not moves_blocks_per_call(sd_model),
        router=marked_router)
