"""What the forks share from ComfyUI: per-call row marks, patcher key lookup, the LoRA clone chain.

All three forks' batched CFG function marks every UNet call with `transformer_options["cond_or_uncond"]`,
one int per chunk of equal size, 0 = cond, 1 = uncond (reForge `ldm_patched/modules/samplers.py:322`,
Forge and Forge Neo `backend/sampling/sampling_function.py:161-162,253`), and their Lora extensions are the
top-level module `networks` (reForge `extensions-builtin/Lora/extra_networks_lora.py:2`, Forge and Neo
`extensions-builtin/sd_forge_lora/extra_networks_lora.py:2`). reForge and Neo also keep LoRAs the same
way (ComfyUI's model patcher, one clone per LoRA): the selection and the pass hook below serve both.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from pg_ext.config import SettingsError
from pg_ext.router import MarkedRowRouter
from pg_ext.rows import WeakRows
from pg_ext.session import merge_deltas

UNCOND = 1  # the uncond entries' index in the forks' `[cond, uncond]`


def loaded_networks() -> list:
    networks = sys.modules.get("networks")  # the built-in Lora extension; None when it is disabled
    return list(getattr(networks, "loaded_networks", []) or [])


def rows_of_call(args: tuple, kwargs: dict) -> Optional[WeakRows]:
    """The weak (uncond) rows of one UNet call from its `cond_or_uncond` marks; None when it has none."""
    options = kwargs.get("transformer_options")
    marks = options.get("cond_or_uncond") if isinstance(options, dict) else None
    x = args[0] if args else kwargs.get("x")
    if marks is None or x is None:
        return None
    return WeakRows.from_chunk_marks(marks, x.shape[0], weak_mark=UNCOND)


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


def on_cloned_unet(p, session, hook):
    """Clone the UNet patcher for this pass (the forks' own pattern) and give it to `hook`; the previous
    patcher comes back when the pass ends, or at once if `hook` fails."""
    session.end_pass()
    objects = p.sd_model.forge_objects
    previous = objects.unet
    patcher = previous.clone()
    objects.unet = patcher

    def restore():
        if objects.unet is patcher:  # another extension may have replaced it since: leave theirs alone
            objects.unet = previous

    try:
        plan = hook(patcher)
    except BaseException:
        restore()
        raise
    session.undo_at_end_of_pass(restore)
    return plan


# -- ComfyUI's model patcher (reForge, Forge Neo): LoRAs as a clone chain of patchers ------------------
# Both forks' Lora extensions start from `forge_objects_original`, clone the UNet and CLIP patchers once
# per LoRA and `add_patches` to the clone; `clone()` copies each key's entry list and sets `parent`. The
# end of the chain is `forge_objects_after_applying_lora`.


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


def backup_base_of(patcher):
    """key -> the weight without any patch: ComfyUI's `backup[key].weight` while the model is patched."""
    def base(key: str):
        backup = patcher.backup.get(key)
        if backup is not None:
            return backup.weight  # merged offline: the parameter holds θ'
        path, _, name = key.rpartition(".")
        return getattr(patcher.model.get_submodule(path), name)
    return base


def begin_chain_pass(p, session, encode_weak, extra_unet_deltas, patcher_deltas: Callable):
    """Clone the UNet patcher for this pass, hook its UNet with the selected LoRAs' θ' − θ_ω from
    `patcher_deltas(patcher, entry ids, ω)` (the host's merge); undone when the pass ends."""
    return on_cloned_unet(p, session, lambda patcher: _hook_chain(p.sd_model, patcher, session, encode_weak,
                                                                  extra_unet_deltas, patcher_deltas))


def _hook_chain(sd_model, patcher, session, encode_weak, extra_unet_deltas, patcher_deltas):
    loaded = loaded_networks()
    selected = session.select(loaded)
    omega = session.settings.omega_schedule.lowest()  # D = (θ' − θ_ω)/(1 − ω) here; each step rescales it
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
        exact_weights=False,  # low-VRAM and online modules merge per forward: only the additive correction sees θ'
        empty_prompt=session.settings.weak_prompt == "empty", keep_on_device=True, router=marked_router)
