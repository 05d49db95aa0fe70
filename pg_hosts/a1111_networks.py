"""Per-layer differences of the personalization LoRAs, read from the WebUI Lora extension's objects.

Nothing is imported from the host: the objects are read by their documented attributes
(A1111 v1.10.1 `extensions-builtin/Lora/network.py`): a network has `name`, `mentioned_name`,
`network_on_disk` (`name`, `alias`, `filename`), `te_multiplier`, `unet_multiplier`, `dyn_dim` and
`modules` keyed by the torch layer's `network_layer_name`; a module has `calc_updown(orig_weight)`
(multiplier included) and, for plain LoRA, `up_model`/`down_model`, `multiplier()`, `calc_scale()`.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from pg_ext.branch import ParamDeltas
from pg_ext.deltas import DenseDelta, LayerDelta, LowRankDelta, is_supported


def _is_plain_lora(module: Any, layer: nn.Module) -> bool:
    """A LoRA/LoCon module whose delta is exactly scale·up(down(x)) on this layer."""
    if not (hasattr(module, "up_model") and hasattr(module, "down_model")):
        return False
    if any(getattr(module, attr, None) is not None for attr in ("mid_model", "dora_scale", "bias")):
        return False
    if getattr(getattr(module, "network", None), "dyn_dim", None) is not None:
        return False
    down = module.down_model.weight
    if isinstance(layer, nn.Linear):
        return down.dim() == 2
    if isinstance(layer, nn.Conv2d):
        same_kernel = tuple(down.shape[2:]) == tuple(layer.kernel_size)
        return (layer.groups == 1 and down.dim() == 4 and down.shape[1] == layer.in_channels
                and (same_kernel or tuple(layer.kernel_size) == (1, 1)))
    return False


def original_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weights without any network: the Lora extension's CPU backup if it merged one."""
    weight = getattr(layer, "network_weights_backup", None)
    bias = getattr(layer, "network_bias_backup", None)
    if weight is None or isinstance(weight, tuple):
        weight, bias = layer.weight, layer.bias
    return weight.detach(), None if bias is None else bias.detach()


def _dense(module: Any, layer: nn.Module, weight: torch.Tensor) -> DenseDelta:
    updown, ex_bias = module.calc_updown(weight)
    if updown.shape != layer.weight.shape and updown.numel() == layer.weight.numel():
        updown = updown.reshape(layer.weight.shape)
    if updown.dim() == 4 and layer.weight.dim() == 4 and updown.shape[1] < layer.weight.shape[1]:
        # an SD LoRA on an inpainting model's 9-channel input conv: the host zero-pads the extra channels
        updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, layer.weight.shape[1] - updown.shape[1]))
    return DenseDelta(updown.detach(), None if ex_bias is None else ex_bias.detach())


def layer_deltas_for(layer: nn.Module, loaded: Sequence[Any], selected: Sequence[Any]) -> list[LayerDelta]:
    """The differences the selected networks add to one Linear/Conv2d/GroupNorm/LayerNorm layer.

    Dense types are evaluated against the same running weight the host's in-place merge feeds them
    (original weight plus the networks before them), so DoRA/IA³/OFT/GLoRA match the host exactly.
    Nothing is computed for a layer no selected network touches, and the networks ahead of a selected
    one are evaluated only when a dense type needs the running weight (plain LoRAs never do).
    """
    name = getattr(layer, "network_layer_name", None)
    if name is None or not is_supported(layer):
        return []
    chosen = {id(n) for n in selected}
    found = [(net, net.modules[name]) for net in loaded if name in getattr(net, "modules", {})]
    if not any(id(net) in chosen for net, _ in found):
        return []
    merged: list[LayerDelta] = []  # deltas of found[:len(merged)], as the host merges them, built on demand

    def running_before(index: int) -> torch.Tensor:
        while len(merged) < index:
            module = found[len(merged)][1]
            plain = _is_plain_lora(module, layer)
            merged.append(_low_rank(module) if plain else _dense(module, layer, running_before(len(merged))))
        running = original_weight(layer)[0].float()
        for d in merged[:index]:
            running = running + d.dense().weight.to(running)
        return running.to(layer.weight.dtype)

    out: list[LayerDelta] = []
    for index, (net, module) in enumerate(found):
        if id(net) not in chosen:
            continue
        if _is_plain_lora(module, layer):
            delta: LayerDelta = _low_rank(module)
        elif index < len(merged):
            delta = merged[index]
        else:
            delta = _dense(module, layer, running_before(index))
            if len(merged) == index:
                merged.append(delta)
        out.append(delta)
    return out


def _low_rank(module: Any) -> LowRankDelta:
    return LowRankDelta(down=module.down_model.weight.detach(), up=module.up_model.weight.detach(),
                        scale=float(module.multiplier()) * float(module.calc_scale()))


def attention_deltas_for(layer: nn.MultiheadAttention, loaded: Sequence[Any], selected: Sequence[Any]) -> ParamDeltas:
    """Differences of a text encoder MultiheadAttention (SD2's OpenCLIP) from the selected networks."""
    name = getattr(layer, "network_layer_name", None)
    deltas = ParamDeltas()
    if name is None:
        return deltas
    q, k, v = layer.in_proj_weight.detach().chunk(3, 0)
    for net in selected:
        parts = [net.modules.get(name + suffix) for suffix in ("_q_proj", "_k_proj", "_v_proj", "_out_proj")]
        if not all(parts):
            continue
        qkv = torch.vstack([parts[0].calc_updown(q)[0], parts[1].calc_updown(k)[0], parts[2].calc_updown(v)[0]])
        out, ex_bias = parts[3].calc_updown(layer.out_proj.weight.detach())
        _accumulate(deltas, "in_proj_weight", qkv)
        _accumulate(deltas, "out_proj.weight", out)
        if ex_bias is not None:
            _accumulate(deltas, "out_proj.bias", ex_bias)
    return deltas


def _accumulate(deltas: ParamDeltas, key: str, value: torch.Tensor) -> None:
    deltas[key] = value.detach() if key not in deltas else deltas[key] + value.detach()


def collect_deltas(layers: Iterable[nn.Module], loaded: Sequence[Any], selected: Sequence[Any]
                   ) -> dict[nn.Module, list[LayerDelta] | ParamDeltas]:
    """Differences of every layer in `layers` that a selected network touches."""
    out: dict[nn.Module, list[LayerDelta] | ParamDeltas] = {}
    if not selected:
        return out
    for layer in layers:
        if isinstance(layer, nn.MultiheadAttention):
            found = attention_deltas_for(layer, loaded, selected)
        else:
            found = layer_deltas_for(layer, loaded, selected)
        if found:
            out[layer] = found
    return out
