"""LoRA/LoCon on the UNet's attention, feed-forward and convolution layers, built on pg_ext's LowRankDelta.

Training adds scale·up(down(x)) with forward hooks; sampling merges the deltas into a copy of the base,
so θ' is the merged model and each layer's D is the LoRA's own low-rank difference.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pg_ext.deltas import LowRankDelta

SKIP = ("time1", "time2")  # the timestep MLP carries no subject


def lora_targets(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every Linear and Conv2d a LoRA/LoCon adapts (attention AND convolutions)."""
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name not in SKIP:
            yield name, module


def new_lora(unet: nn.Module, rank: int = 4, seed: int = 0) -> dict[str, LowRankDelta]:
    """Trainable low-rank deltas: down random, up zero (the model starts unchanged); scale α/r = 1."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, layer in lora_targets(unet):
        if isinstance(layer, nn.Linear):
            down = torch.randn(rank, layer.in_features, generator=gen) / layer.in_features ** 0.5
            up = torch.zeros(layer.out_features, rank)
        else:
            fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            down = torch.randn(rank, layer.in_channels, *layer.kernel_size, generator=gen) / fan_in ** 0.5
            up = torch.zeros(layer.out_channels, rank, 1, 1)
        deltas[name] = LowRankDelta(down.requires_grad_(), up.requires_grad_(), 1.0)
    return deltas


def lora_parameters(deltas: dict[str, LowRankDelta]) -> list[torch.Tensor]:
    """The trainable tensors of a LoRA."""
    return [t for d in deltas.values() for t in (d.down, d.up)]


def attach_hooks(unet: nn.Module, deltas: dict[str, LowRankDelta]) -> list:
    """Forward hooks that add each layer's LoRA output (for training); returns the handles."""
    handles = []
    for name, delta in deltas.items():
        def hook(layer, args, output, delta=delta):
            return output + delta.contribution(layer, args[0])
        handles.append(unet.get_submodule(name).register_forward_hook(hook))
    return handles


def merged(base: nn.Module, deltas: dict[str, LowRankDelta]) -> nn.Module:
    """θ' = θ + Σ D: a copy of the base with every LoRA merged into its layer's weight."""
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, delta in deltas.items():
            layer = tuned.get_submodule(name)
            layer.weight.add_(delta.dense().weight.to(layer.weight.dtype))
    return tuned


def save_lora(deltas: dict[str, LowRankDelta], path: str) -> None:
    """Store down/up per layer name (float32: a rank-4 LoRA is small)."""
    tensors = {}
    for name, d in deltas.items():
        tensors[f"{name}.lora_down"] = d.down.detach().contiguous()
        tensors[f"{name}.lora_up"] = d.up.detach().contiguous()
    save_file(tensors, path, metadata={"scale": "1.0"})


def load_lora(path: str) -> dict[str, LowRankDelta]:
    """Per-layer LowRankDelta from a file written by `save_lora`."""
    tensors = load_file(path)
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    return {n: LowRankDelta(tensors[f"{n}.lora_down"], tensors[f"{n}.lora_up"], 1.0) for n in names}
