"""AUTOMATIC1111 v1.10.1: the UNet is `sd_model.model.diffusion_model`, rows are found by their conditioning.

A1111 batches cond rows first and uncond rows last, but splits, pads and reorders them in several ways
(`pg_ext.rows`), and tells the UNet nothing about which row is which: the router compares each call's
`context` with the step's cond and uncond. LoRA differences come from the built-in Lora extension's
loaded networks (`pg_hosts.a1111_networks`). PG attaches in `process_before_every_sampling` and the
script's wrapper around `p.sample` detaches, whatever happens during sampling.
"""
from __future__ import annotations

import sys

from modules import sd_unet, shared

from pg_ext.session import merge_deltas

from .a1111_networks import collect_deltas, original_weight

NAME = "a1111"
SUPPORTS_BASE_CHECKPOINT = True  # DreamBooth mode: base differences read against the Lora backup


def _opt(name: str, default):
    return getattr(shared.opts, name, default) if hasattr(shared, "opts") else default


def unet(sd_model):
    """The module every UNet call of this pass goes through."""
    return sd_model.model.diffusion_model


def loaded_networks() -> list:
    networks = sys.modules.get("networks")  # the built-in Lora extension; None when it is disabled
    return list(getattr(networks, "loaded_networks", []) or [])


def text_layers(sd_model) -> list:
    root = getattr(sd_model, "conditioner", None) or getattr(sd_model, "cond_stage_model", None)
    return list(root.modules()) if root is not None else []


def original_param(module, name: str):
    """A UNet parameter without any LoRA: the Lora extension's CPU backup when it merged one in place."""
    weight, bias = original_weight(module)
    return weight if name == "weight" else bias if name == "bias" else getattr(module, name)


def moves_blocks_per_call(sd_model) -> bool:
    """--lowvram: the host moves each UNet block to the GPU only while it runs, so PG keeps no device copies.

    The host sets `sd_model.lowvram` for --medvram too, but there the whole UNet stays on the GPU for
    the sampling pass, and PG's per-pass caches are what keeps the weak rows as cheap as CFG.
    """
    return bool(getattr(sd_model, "lowvram", False) and getattr(shared.cmd_opts, "lowvram", False))


def scheduling_args() -> tuple:
    """What prompt_parser.get_learned_conditioning and p.cached_params take after (steps, hires_steps)."""
    return (shared.opts.use_old_scheduling,)


def replacement_unet_active() -> bool:
    """A replacement UNet (TensorRT) runs instead of the torch module: its layers cannot be hooked."""
    return sd_unet.current_unet is not None


def begin_pass(p, session, encode_weak, extra_unet_deltas):
    """Hook this pass's UNet; the router tells weak rows apart by their conditioning (pg_ext.router)."""
    session.end_pass()
    sd_model = shared.sd_model
    loaded = loaded_networks()
    selected = session.select(loaded)
    root = unet(sd_model)
    unet_deltas = merge_deltas(collect_deltas(root.modules(), loaded, selected), extra_unet_deltas)
    return session.begin_pass(
        root, unet_deltas, collect_deltas(text_layers(sd_model), loaded, selected),
        [getattr(n, "name", "?") for n in selected], encode_weak,
        exact_weights=not _opt("lora_functional", False), empty_prompt=session.settings.weak_prompt == "empty",
        keep_on_device=not moves_blocks_per_call(sd_model))


def weak_uncond(weak, host_uncond):
    """ControlNet prepends one marker token to the host's conds; give ours the same first token."""
    weak_x, host_x = _crossattn(weak), _crossattn(host_uncond)
    if host_x is None or weak_x is None or host_x.shape[1] != weak_x.shape[1] + 1:
        return weak
    import torch

    marked = torch.cat([host_x[:, :1].to(weak_x), weak_x], dim=1)
    if isinstance(weak, dict):
        return type(weak)({**weak, "crossattn": marked})
    return marked


def _crossattn(cond):
    return cond.get("crossattn") if isinstance(cond, dict) else cond
