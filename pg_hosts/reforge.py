"""reForge (Panchovix/stable-diffusion-webui-reForge, read at 3b56b268): ComfyUI's model patcher in `ldm_patched`.

What PG relies on (file:line at that commit; see docs/forks.md §2):

* rows: `ldm_patched/modules/samplers.py:_calc_cond_batch` (:213-355) concatenates the cond and uncond
  entries into as few UNet calls as memory allows (several under low memory, :261-273) and marks each
  call: `transformer_options["cond_or_uncond"]` holds one int per chunk, the index into `[cond,
  uncond]` (:322), so 1 = uncond; every chunk has `input_x.shape[0] / len(cond_or_uncond)` rows. The
  call reaches `diffusion_model(xc, t, context=..., control=..., transformer_options=...)`
  (`model_base.py:191`). PG reads the marks in a forward pre-hook on that module: host-side ints, so
  the per-layer hooks never wait for the device.
* LoRAs: `extensions-builtin/Lora/networks.py:98-104` applies the prompt's LoRAs in order with
  `ldm_patched/modules/sd.py:load_lora_for_models` (:89-125), which clones the UNet and CLIP patchers
  (`model_patcher.py:270-282` / `modules_forge/unet_patcher.py:19-35`: `parent` = the patcher cloned,
  the entry tuples shared) and appends one entry per key with `add_patches` (`model_patcher.py:502-524`,
  entries `(strength_patch, patch, strength_model, offset, function)`); the end of that chain is
  `sd_model.forge_objects_after_applying_lora`, its start `sd_model.forge_objects_original`
  (`modules_forge/forge_loader.py:445-447`). So the entries one LoRA added are the ones new in its link.
* θ_ω: `ldm_patched/modules/lora.py:calculate_weight` (:331) merges a key's entries into a weight, for
  every patch type the host knows; the original weight is `patcher.backup[key].weight` while the model
  is patched (`model_patcher.py:566-570`), the parameter itself otherwise.
* text encoder: `sd_model.cond_stage_model` wraps `forge_objects.clip.cond_stage_model`'s transformer
  (`forge_loader.py:489-495`, SDXL :459-488), whose patcher is `forge_objects.clip.patcher`
  (`sd.py:175`, cloned at :186-189); `modules_forge/forge_clip.py:12` merges the CLIP LoRAs in place
  before every encode, so PG corrects the weak encode with its own per-layer hooks and never touches
  the shared patcher's entries.
* attach: `modules/processing.py:1458-1462` (txt2img), `:1568-1573` (hires, one call), `:1913-1917`
  (img2img) reset `forge_objects` from `forge_objects_after_applying_lora`, then call
  `process_before_every_sampling`, inside `p.sample` (`:1427`), which the entry script wraps.
"""
from __future__ import annotations

from typing import Optional

from pg_ext.config import SettingsError
from pg_ext.patches import patch_deltas
from pg_ext.session import merge_deltas

from .comfy import UNCOND, layer_of, loaded_networks, marked_router, on_cloned_unet, rows_of_call  # noqa: F401 (the adapter's API)

NAME = "reforge"
SUPPORTS_BASE_CHECKPOINT = False  # DreamBooth mode: not built for reForge yet (the script refuses it)


def unet(sd_model):
    """The module every UNet call goes through (shared by all clones of the UNet patcher)."""
    return sd_model.forge_objects.unet.model.diffusion_model


def original_param(module, name: str):
    return getattr(module, name)  # unused while SUPPORTS_BASE_CHECKPOINT is False


def moves_blocks_per_call(sd_model) -> bool:
    return False  # the patcher's low-VRAM mode merges per forward (LowVramPatch); PG's deltas are small


def replacement_unet_active() -> bool:
    from modules import sd_unet

    return sd_unet.current_unet is not None


def weak_uncond(weak, host_uncond):
    return weak  # no marker token to carry over: reForge's ControlNet rides on the cond entries


# -- which entries belong to which LoRA ----------------------------------------------------------------

def _links(after, original) -> Optional[list]:
    """The patchers from `original` (excluded) to `after` (included), oldest first; None if not a chain."""
    chain = []
    patcher = after
    while patcher is not None and patcher is not original:
        chain.append(patcher)
        patcher = getattr(patcher, "parent", None)
    return list(reversed(chain)) if patcher is original else None


def _new_entries(patcher) -> set[int]:
    """Ids of the entries this link added: each key's list is the parent's list plus the new ones."""
    parent = getattr(patcher, "parent", None)
    before = getattr(parent, "patches", {}) if parent is not None else {}
    return {id(e) for key, entries in patcher.patches.items() for e in entries[len(before.get(key, [])):]}


def selected_entries(after, original, loaded: list, selected: list) -> set[int]:
    """Ids of the patch entries the selected LoRAs added to one patcher chain (UNet or CLIP)."""
    links = _links(after, original)
    if links is None:
        raise SettingsError("loras", ", ".join(getattr(n, "name", "?") for n in selected),
                            "cannot be told apart: the model's LoRA patchers are not one clone chain")
    if len(selected) == len(loaded):
        return set().union(*(_new_entries(p) for p in links)) if links else set()
    if len(links) != len(loaded):
        raise SettingsError("loras", ", ".join(getattr(n, "name", "?") for n in selected),
                            f"cannot be told apart: {len(loaded)} LoRAs in the prompt but {len(links)} patch "
                            "steps (a LoRA at strength 0?); leave the field empty to select every LoRA")
    chosen = {id(n) for n in selected}
    return set().union(*(_new_entries(p) for p, n in zip(links, loaded) if id(n) in chosen))


# -- θ_ω differences from a patcher ---------------------------------------------------------------------

def _base_of(patcher):
    def base(key: str):
        backup = patcher.backup.get(key)
        if backup is not None:
            return backup.weight  # the model is patched: the parameter holds θ'
        path, _, name = key.rpartition(".")
        return getattr(patcher.model.get_submodule(path), name)
    return base


def patcher_deltas(patcher, selected: set[int], omega: float) -> dict:
    """θ' − θ_ω per layer of the patcher's model, from its entries, merged by the host's own function."""
    from ldm_patched.modules.lora import calculate_weight

    return patch_deltas(patcher.patches, selected, omega, layer_of(patcher.model), _base_of(patcher),
                        merge=calculate_weight)


# -- attach ---------------------------------------------------------------------------------------------

def begin_pass(p, session, encode_weak, extra_unet_deltas):
    """Clone the UNet patcher for this pass (Forge's pattern), hook its UNet; undone when the pass ends.

    PG changes nothing on the clone (its hooks are on the shared modules); the clone keeps PG's pass on
    an object of its own, so that whatever PG puts on it never reaches the LoRA chain's patchers.
    """
    return on_cloned_unet(p, session,
                          lambda patcher: _hook(p.sd_model, patcher, session, encode_weak, extra_unet_deltas))


def _hook(sd_model, patcher, session, encode_weak, extra_unet_deltas):
    loaded = loaded_networks()
    selected = session.select(loaded)
    omega = session.settings.omega
    original, after = sd_model.forge_objects_original, sd_model.forge_objects_after_applying_lora
    unet_deltas = patcher_deltas(patcher, selected_entries(after.unet, original.unet, loaded, selected), omega)
    clip = sd_model.forge_objects.clip
    text_deltas = {}
    if clip is not None:
        chosen = selected_entries(after.clip.patcher, original.clip.patcher, loaded, selected)
        text_deltas = patcher_deltas(clip.patcher, chosen, omega)
    return session.begin_pass_with(
        patcher.model.diffusion_model, merge_deltas(unet_deltas, extra_unet_deltas), text_deltas,
        [getattr(n, "name", "?") for n in selected], encode_weak,
        exact_weights=False,  # low-VRAM modules merge per forward: only the additive correction sees θ'
        empty_prompt=session.settings.weak_prompt == "empty", keep_on_device=True, router=marked_router)
