"""Forge Neo (Haoming02/sd-webui-forge-classic, branch `neo`; read at release 2.26 as redistributed in
exo101/sd-webui-forge-neo-v3 @de2193d, `webui/`): Forge's `backend/` with ComfyUI's model patcher.

What PG relies on (file:line in that tree; see docs/forks.md §3):

* rows: `backend/sampling/sampling_function.py:calc_cond_uncond_batch` (:156-) is Forge 2's: entries
  joined in reverse order into as few UNet calls as fit, each marked with
  `transformer_options["cond_or_uncond"]` (:253), one int per chunk, 1 = uncond; the call reaches
  `diffusion_model(xc, t, context=, control=, transformer_options=)` (`backend/modules/k_model.py:57`).
  Same marks as Forge and reForge: `comfy.rows_of_call` reads them.
* LoRAs: `extensions-builtin/sd_forge_lora/networks.py:load_networks` starts from
  `forge_objects_original` and, per LoRA, clones the UNet and CLIP patchers and calls `add_patches`
  (`load_lora_for_models`); the end of that chain is `forge_objects_after_applying_lora`. Unlike Forge 2
  the patcher is ComfyUI's (`backend/patcher/base.py:169-`): `add_patches` (:414-435) appends to a flat
  `patches[key]` list the entry `(strength_patch, patch, strength_model, offset, function, online_mode)`
  and drops the file name; `clone()` (:221-241) copies each list and sets `parent`. Which patchers a
  LoRA clones is the loader's call (networks.py:39-80: only a side it has keys for, none when most keys
  match nothing), so PG replays that loader to learn which entries each LoRA added (`comfy.lora_owners`).
* θ_ω: `backend/patcher/lora.py:merge_lora_to_weight(patches, weight, key, computation_dtype)` merges a
  key's entries in place into the weight it is given (ComfyUI weight adapters included: LoRA, LoHa,
  LoKr, DoRA, …). Offline, the original is `patcher.backup[key].weight` while the model is patched
  (`base.py:473-474`, shared by all clones); online or low-VRAM modules merge per forward from the
  unpatched parameter (`LowVramPatch`, :110-121, in `weight_function`). `weight_wrapper_patches`
  (:351-353) is filled by nothing in Neo's own code (no LoRA type uses it).
* layers: `backend/operations.py` `ForgeOperations.Linear/Conv2d/Conv3d/RMSNorm` subclass torch's (:177-305;
  RMSNorm with `add` uses 1 + w, :313,328-330). Weights stored
  quantized (bnb `bnb_quantized`, GGUF `gguf_cls`) or converted at load (`convert_weight` on the layer:
  mixed-precision and fp8 layouts) are not handled: PG stays off for the pass and says so.
* text encoder: `backend/patcher/clip.py:11-27`, `clip.patcher` patches `clip.cond_stage_model`;
  `get_learned_conditioning` loads that patcher before every encode (`diffusion_engine/sd15.py:50`).
* attach: `modules/processing.py:1379-1383` (txt2img), `:1543-1547` (hires), `:1899-1903` (img2img) reset
  `forge_objects` from `forge_objects_after_applying_lora`, then call `process_before_every_sampling`,
  inside `p.sample`, which the entry script wraps.
"""
from __future__ import annotations


from .comfy import (  # noqa: F401 (the adapter's API)
    backup_base_of, begin_chain_pass, layer_of, loaded_networks, low_vram, marked_router, merged_into_fp8,
    plain_layer_of, rounding_merge)
from .patches import patch_deltas
from .reforge import (  # noqa: F401 (same in Neo)
    original_param, replacement_unet_active, unet, weak_uncond)

NAME = "forge_neo"
SUPPORTS_BASE_CHECKPOINT = True  # DreamBooth mode: differences read against the patcher's unpatched weights


def moves_blocks_per_call(sd_model) -> bool:
    """--lowvram/--novram or a partial load: the UNet streams per call, PG keeps nothing on the device."""
    return low_vram("backend.memory_management", sd_model)


def scheduling_args() -> tuple:
    """Neo dropped the `use_old_scheduling` option: get_learned_conditioning(model, prompts, steps,
    hires_steps) and cached_params(prompts, steps, extra_network_data, hires_steps) end there
    (modules/prompt_parser.py:163, modules/processing.py:412)."""
    return ()


def patcher_deltas(patcher, selected: set[int], omega: float, every_row_weak: bool = False) -> dict:
    """θ' − θ_ω per layer of the patcher's model, from its entries, merged by Neo's own function
    (`every_row_weak`: for the text encoder, whose weak encode has only weak rows)."""
    import torch
    from backend.float import stochastic_rounding
    from backend.patcher.lora import merge_lora_to_weight, string_to_seed

    def merge(entries, weight, key):
        return merge_lora_to_weight(entries, weight, key, computation_dtype=torch.float32)

    def round_to(value, dtype, key):  # as `patch_weight_to_device` writes an offline merge (base.py:486-487)
        return stochastic_rounding(value, dtype, seed=string_to_seed(key))

    patches = {key: entries for key, entries in patcher.patches.items() if not never_merged(patcher.model, key)}
    return patch_deltas(patches, selected, omega, plain_layer_of(patcher.model), backup_base_of(patcher),
                        rounding_merge(merge, patcher, round_to, ONLINE_FLAG), row_permutations=row_permutations(),
                        every_row_weak=every_row_weak, rounded_on_merge=merged_into_fp8(patcher, ONLINE_FLAG))


ONLINE_FLAG = 5  # an entry's `online_mode` field (base.py:431): merged per forward, never rounded to storage


def never_merged(model, key: str) -> bool:
    """Whether Neo's loader leaves this key's patches out of the weights it loads.

    `ModelPatcher._load_list` (`backend/patcher/base.py:512-521`) lists only modules whose parameters are all
    their own, and `load` merges the parameters of listed modules only (:620-640; low-VRAM: their `.weight` and
    `.bias`, :562-591). So a LoRA key on a raw parameter of a module with children (Wan's `blocks.N.modulation`
    and `head.modulation`, Lumina's / Z-Image's `x_pad_token`, `cap_pad_token`) stays in `patches` and is never
    merged: θ' and θ_ω (the loader at ω × strength) both lack it, and PG leaves it alone.
    """
    path, _, name = key.rpartition(".")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return False  # not a parameter at all: patch_deltas says so
    own = {n for n, _ in module.named_parameters(recurse=False)}
    return name in own and any(n not in own for n, _ in module.named_parameters())


def row_permutations() -> tuple:
    """The entry functions of Neo's LoRA key maps that only reorder whole rows: `swap_scale_shift`
    (`modules_forge/packages/comfy/utils.py:159-162`, on Flux/Chroma's `final_layer.adaLN_modulation.1`,
    :267-268). PG corrects such an entry low rank with the rows of `up` permuted as the host's merge moves them."""
    from modules_forge.packages.comfy.utils import swap_scale_shift

    return (swap_scale_shift,)


def load_one(unet_patcher, clip, target: tuple) -> tuple:
    """One LoRA through Neo's loader as `load_networks` runs it (networks.py:145-149): the file read by the
    extension's reader, kohya's doubled `lora_unet__` prefix fixed, then `load_lora_for_models` (:39-80)."""
    import networks

    filename, strength_model, strength_clip = target[:3]
    online = bool(target[3]) if len(target) > 3 else False
    lora = networks.load_lora_state_dict(filename)
    if any(key.startswith("lora_unet__") for key in lora):
        from backend.state_dict import state_dict_prefix_replace

        lora = state_dict_prefix_replace(lora, {"lora_unet__": "lora_unet_"})
    return networks.load_lora_for_models(unet_patcher, clip, lora, strength_model, strength_clip, filename=filename,
                                         online_mode=online)


def begin_pass(p, session, encode_weak, extra_unet_deltas):
    """Hook this pass's UNet with the selected LoRAs' θ' − θ_ω; undone when the pass ends."""
    return begin_chain_pass(p, session, encode_weak, extra_unet_deltas, patcher_deltas, load_one,
                            moves_blocks_per_call)
