"""What reForge and Forge share from ComfyUI's sampling code: per-call row marks, patcher key lookup.

Both forks' batched CFG function marks every UNet call with `transformer_options["cond_or_uncond"]`,
one int per chunk of equal size, 0 = cond, 1 = uncond (reForge `ldm_patched/modules/samplers.py:322`,
Forge `backend/sampling/sampling_function.py:161-162,253`), and both Lora extensions are the
top-level module `networks` (reForge `extensions-builtin/Lora/extra_networks_lora.py:2`, Forge
`extensions-builtin/sd_forge_lora/extra_networks_lora.py:2`).
"""
from __future__ import annotations

import sys
from typing import Optional

from pg_ext.router import MarkedRowRouter
from pg_ext.rows import WeakRows

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
