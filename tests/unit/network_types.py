"""Network modules of every type the WebUI's Lora extension loads, as plain test objects.

They follow the host's module API (A1111 v1.10.1 extensions-builtin/Lora/network*.py): `calc_updown(orig_weight)`
returns (updown, ex_bias) with the network's multiplier applied last, plain LoRA also exposes
`up_model`/`down_model`, `multiplier()`, `calc_scale()`. The maths of each type is written from its
definition (LoHa: Hadamard product, LoKr: Kronecker product, IA³: scaling, OFT: Cayley rotation,
GLoRA, DoRA weight decomposition), small and seeded.
"""
from __future__ import annotations

import types

import torch
from torch import nn


class Net:
    """A loaded network: name, multipliers and modules keyed by layer name."""

    def __init__(self, name: str, strength: float = 1.0):
        self.name = self.mentioned_name = name
        self.te_multiplier = self.unet_multiplier = strength
        self.dyn_dim = None
        self.network_on_disk = types.SimpleNamespace(name=name, alias=name, filename=f"/loras/{name}.safetensors")
        self.modules: dict = {}


class Module:
    """Base: multiplier last, like the host's finalize_updown."""

    mid_model = dora_scale = bias = None
    scale = None
    alpha = dim = None

    def __init__(self, net: Net, layer: nn.Module):
        self.network, self.sd_module = net, layer
        self.sd_key = getattr(layer, "network_layer_name", "layer")

    def multiplier(self) -> float:
        return self.network.unet_multiplier

    def calc_scale(self) -> float:
        return self.alpha / self.dim if self.alpha is not None and self.dim else 1.0

    def raw(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def calc_updown(self, orig_weight: torch.Tensor):
        updown, ex_bias = self.raw(orig_weight)
        if updown.numel() == orig_weight.numel():  # like the host: only a same-size updown takes the weight's shape
            updown = updown.reshape(orig_weight.shape)
        updown = updown * self.calc_scale()
        if self.dora_scale is not None:
            merged = orig_weight + updown
            norm = merged.flatten(1).norm(dim=1).reshape(-1, *([1] * (merged.dim() - 1)))
            updown = merged * (self.dora_scale / norm) - orig_weight
        m = self.multiplier()
        return updown * m, None if ex_bias is None else ex_bias * m


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _r(gen, *shape, s=0.2):
    return torch.randn(*shape, generator=gen) * s


class Lora(Module):
    def __init__(self, net, layer, rank=3, seed=0, conv_kernel=None, dora=False, mid=False):
        super().__init__(net, layer)
        gen = _g(seed)
        out_c, in_c = layer.weight.shape[:2]
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size
            self.down_model = nn.Conv2d(in_c, rank, k, layer.stride, layer.padding, bias=False)
            self.up_model = nn.Conv2d(rank, out_c, 1, bias=False)
        else:
            self.down_model, self.up_model = nn.Linear(in_c, rank, bias=False), nn.Linear(rank, out_c, bias=False)
        with torch.no_grad():
            self.down_model.weight.copy_(_r(gen, *self.down_model.weight.shape))
            self.up_model.weight.copy_(_r(gen, *self.up_model.weight.shape))
        self.alpha, self.dim = 2.0, rank
        if mid:
            self.mid_model = torch.eye(rank) + _r(gen, rank, rank, s=0.1)
        if dora:
            self.dora_scale = layer.weight.detach().flatten(1).norm(dim=1).reshape(-1, *([1] * (layer.weight.dim() - 1))) * 1.1

    def raw(self, w):
        up, down = self.up_model.weight.flatten(1), self.down_model.weight.flatten(1)
        if self.mid_model is not None:
            up = up @ self.mid_model
        return (up @ down).reshape(up.shape[0], *self.down_model.weight.shape[1:]), None


class Hada(Module):
    def __init__(self, net, layer, rank=2, seed=1):
        super().__init__(net, layer)
        gen = _g(seed)
        o, i = layer.weight.shape[0], layer.weight[0].numel()
        self.w1a, self.w1b, self.w2a, self.w2b = _r(gen, o, rank), _r(gen, rank, i), _r(gen, o, rank), _r(gen, rank, i)

    def raw(self, w):
        return ((self.w1a @ self.w1b) * (self.w2a @ self.w2b)).reshape(w.shape), None


class Lokr(Module):
    def __init__(self, net, layer, seed=2):
        super().__init__(net, layer)
        gen = _g(seed)
        o, i = layer.weight.shape[0], layer.weight[0].numel()
        self.w1, self.w2 = _r(gen, 2, 2), _r(gen, o // 2, i // 2)

    def raw(self, w):
        return torch.kron(self.w1, self.w2).reshape(w.shape), None


class Ia3(Module):
    def __init__(self, net, layer, seed=3):
        super().__init__(net, layer)
        self.w = _r(_g(seed), layer.weight.shape[0])

    def raw(self, w):
        return w * self.w.reshape(-1, *([1] * (w.dim() - 1))), None


class Oft(Module):
    def __init__(self, net, layer, seed=4):
        super().__init__(net, layer)
        o = layer.weight.shape[0]
        q = _r(_g(seed), o, o, s=0.1)
        self.q = q - q.T

    def raw(self, w):
        eye = torch.eye(self.q.shape[0])
        rotation = (eye + self.q) @ torch.linalg.inv(eye - self.q)
        return (rotation @ w.flatten(1)).reshape(w.shape) - w, None


class Glora(Module):
    def __init__(self, net, layer, rank=2, seed=5):
        super().__init__(net, layer)
        gen = _g(seed)
        o, i = layer.weight.shape[0], layer.weight[0].numel()
        self.a1, self.a2, self.b1, self.b2 = _r(gen, rank, i), _r(gen, i, rank), _r(gen, rank, i), _r(gen, o, rank)

    def raw(self, w):
        flat = w.flatten(1)
        return (self.b2 @ self.b1 + (flat @ self.a2) @ self.a1).reshape(w.shape), None


class Full(Module):
    def __init__(self, net, layer, seed=6):
        super().__init__(net, layer)
        gen = _g(seed)
        self.diff, self.diff_b = _r(gen, *layer.weight.shape), _r(gen, *layer.bias.shape)

    def raw(self, w):
        return self.diff.clone(), self.diff_b.clone()


class Norm(Module):
    def __init__(self, net, layer, seed=7):
        super().__init__(net, layer)
        gen = _g(seed)
        self.w_norm, self.b_norm = _r(gen, *layer.weight.shape), _r(gen, *layer.bias.shape)

    def raw(self, w):
        return self.w_norm.clone(), self.b_norm.clone()


def merge(layer: nn.Module, nets: list[Net], multipliers: dict[str, float]) -> None:
    """The host's in-place merge: backup, then each network's updown against the running weight."""
    name = layer.network_layer_name
    if getattr(layer, "network_weights_backup", None) is None:
        layer.network_weights_backup = layer.weight.detach().clone()
        layer.network_bias_backup = None if layer.bias is None else layer.bias.detach().clone()
    with torch.no_grad():
        layer.weight.copy_(layer.network_weights_backup)
        if layer.bias is not None:
            layer.bias.copy_(layer.network_bias_backup)
        for net in nets:
            module = net.modules.get(name)
            if module is None:
                continue
            saved = net.unet_multiplier
            net.unet_multiplier = multipliers.get(net.name, saved)
            try:
                updown, ex_bias = module.calc_updown(layer.weight.detach().clone())
            finally:
                net.unet_multiplier = saved
            layer.weight.add_(updown)
            if ex_bias is not None:
                layer.bias.add_(ex_bias)
