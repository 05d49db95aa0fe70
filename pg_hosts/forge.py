"""Forge 2 (lllyasviel/stable-diffusion-webui-forge, read at dfdcbab6): `backend/`, LoRAs as patcher data by file.

What PG relies on (file:line at that commit; see docs/forks.md §1 and §5):

* rows: `backend/sampling/sampling_function.py:calc_cond_uncond_batch` (:154-289) joins the cond and
  uncond entries in reverse order (:187) into as few UNet calls as memory allows and marks each one
  with `transformer_options["cond_or_uncond"]` (:253; COND = 0, UNCOND = 1, :161-162), one int per
  chunk of B rows; the call reaches `diffusion_model(xc, t, context=, control=, transformer_options=)`
  (`backend/modules/k_model.py:45`). Same marks as reForge: `comfy.rows_of_call` reads them.
* LoRAs: `extensions-builtin/sd_forge_lora/networks.py:108-126` loads the prompt's LoRAs in order with
  `add_patches(filename=network_on_disk.filename, ...)` on clones of the UNet and CLIP patchers
  (`:15-53`); `backend/patcher/base.py:91-117` stores them as `lora_patches[(filename, strength_patch,
  strength_model, online_mode)] = {key: [[strength_patch, patch, strength_model, offset, function]]}`,
  so a LoRA's entries are found by its file. A LoRA entry's patch is `("lora", (up, down, alpha, mid,
  dora_scale))` (`backend/patcher/lora.py:145-177`).
* θ_ω: `LoraLoader.refresh` (`lora.py:352-426`) merges each key's entries, concatenated over
  `lora_patches` in order (:360-364), with `merge_lora_to_weight(patches, weight, key,
  computation_dtype)` (:85) and keeps the original in `model.lora_loader.backup[key]` (:407-408;
  loader per model, `base.py:63-66`). Online LoRAs (quantized storage) are merged per forward
  (`backend/operations.py:38-39`) from the unmerged parameter.
* layers: `ForgeOperations.Linear` is an `nn.Module`, not an `nn.Linear` (`operations.py:126-156`,
  `F.linear` forward): registered with `pg_ext.deltas.register_linear`. Conv2d/GroupNorm/LayerNorm
  subclass torch's (`:158,293,312`). Quantized weights (bnb, gguf, fp8 `scale_weight`) are not handled:
  PG stays off for the pass and says so.
* text encoder: `backend/patcher/clip.py:18-27`: `clip.patcher` patches `clip.cond_stage_model`.
* base checkpoint (DreamBooth): θ' is the loaded checkpoint's UNet without the prompt's LoRAs, from the
  loader's `backup` where it merged them (`original_param`); the LoRA differences are added on top.
* attach: `modules/processing.py:1373-1377` (txt2img), hires `:1510` then reset and `:1522` (twice:
  `begin_pass` ends the previous pass first), img2img `:1851-1855`; `p.sd_model` is `shared.sd_model`
  (`:263-264`).
"""
from __future__ import annotations

from pg_ext.deltas import register_linear
from pg_ext.session import merge_deltas

from .comfy import (QUANTIZED, file_key, layer_of, loaded_networks, low_vram, marked_router, selected_files,
                    unpatched_param)
from .patches import patch_deltas
from .reforge import (  # noqa: F401 (same in Forge)
    replacement_unet_active, scheduling_args, unet)

NAME = "forge"
SUPPORTS_BASE_CHECKPOINT = True  # DreamBooth mode: differences read against the LoRA loader's backup


def _register_layers() -> None:
    from backend.operations import ForgeOperations

    register_linear(ForgeOperations.Linear)


def original_param(module, name: str):
    """A UNet parameter as the loaded checkpoint has it, without the prompt's LoRAs (base-checkpoint mode reads
    θ' − θ_base against it). Offline LoRAs are merged by the model's one `LoraLoader`, which keeps each
    original in `backup[key]` (lora.py:407-408, a plain tensor; the loader is the model's, base.py:63-66) and
    restores every one before it merges a new set (:379-386); online LoRAs leave the parameter as loaded."""
    from modules import shared

    _register_layers()  # checkpoint_deltas asks is_supported of each changed layer: Forge's Linear is one
    patcher = shared.sd_model.forge_objects.unet
    backup = patcher.model.lora_loader.backup
    return unpatched_param(patcher.model.diffusion_model, module, name, backup.get)


def moves_blocks_per_call(sd_model) -> bool:
    """--lowvram/--novram (backend/memory_management.py): the UNet streams per call, PG keeps nothing there."""
    return low_vram("backend.memory_management", sd_model)


def weak_uncond(weak, host_uncond):
    return weak


# -- which entries belong to which LoRA ----------------------------------------------------------------

def selected_entries(patcher, selected: list) -> set[int]:
    """Ids of the entries the selected LoRAs' files added to this patcher (UNet or CLIP)."""
    files = selected_files(selected)
    chosen = set()
    for (filename, _, _, _), by_key in patcher.lora_patches.items():
        if file_key(filename) in files:
            chosen |= {id(e) for entries in by_key.values() for e in entries}
    return chosen


def entries_by_key(patcher) -> dict:
    """Each key's entries in the order the loader merges them (lora.py:360-364)."""
    out: dict = {}
    for by_key in patcher.lora_patches.values():
        for key, entries in by_key.items():
            out[key] = out.get(key, []) + list(entries)
    return out


# -- θ_ω differences ------------------------------------------------------------------------------------

def _base_of(patcher):
    def base(key: str):
        saved = patcher.lora_loader.backup.get(key)
        if saved is not None:
            return saved  # merged offline: the parameter holds θ'
        path, _, name = key.rpartition(".")
        weight = getattr(patcher.model.get_submodule(path), name)
        if any(hasattr(weight, attr) for attr in QUANTIZED):
            raise NotImplementedError(f"{key} is stored quantized (bnb/gguf): not supported by PG yet")
        return weight
    return base


def _unquantized_layer_of(root):
    find = layer_of(root)

    def layer(key: str):
        found = find(key)
        if found is not None and getattr(found[0], "scale_weight", None) is not None:
            raise NotImplementedError(f"{key} is stored as scaled fp8: not supported by PG yet")
        return found
    return layer


def patcher_deltas(patcher, selected: set[int], omega: float) -> dict:
    """θ' − θ_ω per layer of the patcher's model, merged by Forge's own function."""
    import torch
    from backend.patcher.lora import merge_lora_to_weight

    _register_layers()  # before any layer check: without it Forge's Linears would look unsupported

    def merge(entries, weight, key):
        return merge_lora_to_weight(entries, weight, key, computation_dtype=torch.float32)

    return patch_deltas(entries_by_key(patcher), selected, omega, _unquantized_layer_of(patcher.model), _base_of(patcher), merge)


# -- attach ---------------------------------------------------------------------------------------------

def begin_pass(p, session, encode_weak, extra_unet_deltas):
    """Hook this pass's UNet with the selected LoRAs' θ' − θ_ω (PG puts nothing on Forge's patchers)."""
    session.end_pass()
    sd_model = p.sd_model
    selected = session.select(loaded_networks())
    omega = session.settings.omega_schedule.lowest()  # D = (θ' − θ_ω)/(1 − ω) here; each step rescales it
    patcher = sd_model.forge_objects.unet
    unet_deltas = patcher_deltas(patcher, selected_entries(patcher, selected), omega)
    clip = sd_model.forge_objects.clip
    text_deltas = {} if clip is None else patcher_deltas(clip.patcher, selected_entries(clip.patcher, selected), omega)
    return session.begin_pass(
        patcher.model.diffusion_model, merge_deltas(unet_deltas, extra_unet_deltas), text_deltas,
        [getattr(n, "name", "?") for n in selected], encode_weak,
        exact_weights=False,  # online LoRAs merge per forward: only the additive correction sees θ'
        empty_prompt=session.settings.weak_prompt == "empty", keep_on_device=not moves_blocks_per_call(sd_model),
        router=marked_router)
