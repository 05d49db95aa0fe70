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
  (`modules_forge/forge_loader.py:445-447`). A LoRA at strength 0 on both sides adds no link (sd.py:89-104),
  so PG replays the loader to learn which entries each LoRA added (`comfy.lora_owners`).
* θ_ω: `ldm_patched/modules/lora.py:calculate_weight` (:331) merges a key's entries into a weight, for
  every patch type the host knows; the original weight is `patcher.backup[key].weight` while the model
  is patched (`model_patcher.py:566-570`), the parameter itself otherwise.
* text encoder: `sd_model.cond_stage_model` wraps `forge_objects.clip.cond_stage_model`'s transformer
  (`forge_loader.py:489-495`, SDXL :459-488), whose patcher is `forge_objects.clip.patcher`
  (`sd.py:175`, cloned at :186-189); `modules_forge/forge_clip.py:12` merges the CLIP LoRAs in place
  before every encode, so PG corrects the weak encode with its own per-layer hooks and never touches
  the shared patcher's entries.
* base checkpoint (DreamBooth): θ' is the loaded checkpoint's UNet without the prompt's LoRAs, read from the
  patcher's shared `backup` where it merged them (`model_patcher.py:566-570`, clones share it :280) or from
  the parameter (`comfy.original_param_of`); the LoRA differences are added on top, as in A1111.
* attach: `modules/processing.py:1458-1462` (txt2img), `:1568-1573` (hires, one call), `:1913-1917`
  (img2img) reset `forge_objects` from `forge_objects_after_applying_lora`, then call
  `process_before_every_sampling`, inside `p.sample` (`:1427`), which the entry script wraps.
"""
from __future__ import annotations

from .comfy import (  # noqa: F401 (the adapter's API)
    UNCOND, backup_base_of, begin_chain_pass, layer_of, loaded_networks, low_vram, marked_router, merged_into_fp8,
    original_param_of, plain_layer_of, rounding_merge, rows_of_call)
from .patches import patch_deltas

NAME = "reforge"
SUPPORTS_BASE_CHECKPOINT = True  # DreamBooth mode: differences read against the patcher's unpatched weights


def unet(sd_model):
    """The module every UNet call goes through (shared by all clones of the UNet patcher)."""
    return sd_model.forge_objects.unet.model.diffusion_model


def original_param(module, name: str):
    """A UNet parameter as the loaded checkpoint has it, without the prompt's LoRAs (base-checkpoint mode reads
    θ' − θ_base against it): the shared `backup` while the patcher has merged them (`comfy.original_param_of`)."""
    from modules import shared

    return original_param_of(shared.sd_model.forge_objects.unet, module, name)


def moves_blocks_per_call(sd_model) -> bool:
    """--lowvram/--novram or a partial load: the UNet streams per call, PG keeps nothing on the device."""
    return low_vram("ldm_patched.modules.model_management", sd_model)


def scheduling_args() -> tuple:
    """What prompt_parser.get_learned_conditioning and p.cached_params take after (steps, hires_steps)."""
    from modules import shared

    return (shared.opts.use_old_scheduling,)


def replacement_unet_active() -> bool:
    from modules import sd_unet

    return sd_unet.current_unet is not None


def weak_uncond(weak, host_uncond):
    return weak  # no marker token to carry over: reForge's ControlNet rides on the cond entries


# -- θ_ω differences from a patcher ---------------------------------------------------------------------

def patcher_deltas(patcher, selected: set[int], omega: float, every_row_weak: bool = False) -> dict:
    """θ' − θ_ω per layer of the patcher's model, from its entries, merged by the host's own function
    (`every_row_weak`: for the text encoder, whose weak encode has only weak rows)."""
    from ldm_patched.float import stochastic_rounding
    from ldm_patched.modules.lora import calculate_weight
    from ldm_patched.modules.model_patcher import string_to_seed

    def round_to(value, dtype, key):  # as `patch_weight_to_device` writes a merge (model_patcher.py:581)
        return stochastic_rounding(value, dtype, seed=string_to_seed(key))

    return patch_deltas(patcher.patches, selected, omega, plain_layer_of(patcher.model), backup_base_of(patcher),
                        merge=rounding_merge(calculate_weight, patcher, round_to), every_row_weak=every_row_weak,
                        rounded_on_merge=merged_into_fp8(patcher))


# -- attach ---------------------------------------------------------------------------------------------

def load_one(unet_patcher, clip, target: tuple) -> tuple:
    """One LoRA through reForge's loader as `load_networks` runs it (networks.py:98-104)."""
    import networks

    filename, strength_model, strength_clip = target[:3]
    return networks.load_lora_for_models(unet_patcher, clip, networks.load_lora_state_dict(filename), strength_model,
                                         strength_clip, filename=filename)


def begin_pass(p, session, encode_weak, extra_unet_deltas):
    """Hook this pass's UNet with the selected LoRAs' θ' − θ_ω; undone when the pass ends."""
    return begin_chain_pass(p, session, encode_weak, extra_unet_deltas, patcher_deltas, load_one,
                            moves_blocks_per_call)
