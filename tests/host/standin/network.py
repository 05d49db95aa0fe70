"""Stand-in for extensions-builtin/Lora/network.py (A1111 v1.10.1): NetworkOnDisk, Network, ModuleType, NetworkModule."""
from __future__ import annotations

import os
from collections import namedtuple

import torch.nn as nn
import torch.nn.functional as F

NetworkWeights = namedtuple('NetworkWeights', ['network_key', 'sd_key', 'w', 'sd_module'])


class NetworkOnDisk:
    """mirrors network.NetworkOnDisk (name, filename, metadata, alias, hash/shorthash) without reading files."""

    def __init__(self, name, filename, metadata=None, sha256=""):
        self.name = name
        self.filename = filename
        self.metadata = metadata or {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.alias = self.metadata.get('ss_output_name', self.name)
        self.hash = None
        self.shorthash = None
        self.set_hash(sha256)

    def set_hash(self, v):
        self.hash = v
        self.shorthash = self.hash[0:12]

    def read_hash(self):
        pass

    def get_alias(self):
        return self.alias


class Network:  # LoraModule
    """mirrors network.Network."""

    def __init__(self, name, network_on_disk: NetworkOnDisk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None


class ModuleType:
    def create_module(self, net: Network, weights: NetworkWeights) -> Network | None:
        return None


class NetworkModule:
    """mirrors network.NetworkModule — ops/extra_kwargs by layer type, multiplier(), calc_scale(), finalize_updown()."""

    def __init__(self, net: Network, weights: NetworkWeights):
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        if hasattr(self.sd_module, 'weight'):
            self.shape = self.sd_module.weight.shape
        elif isinstance(self.sd_module, nn.MultiheadAttention):
            self.shape = self.sd_module.out_proj.weight.shape
        else:
            self.shape = None
        self.ops = None
        self.extra_kwargs = {}
        if isinstance(self.sd_module, nn.Conv2d):
            self.ops = F.conv2d
            self.extra_kwargs = {'stride': self.sd_module.stride, 'padding': self.sd_module.padding}
        elif isinstance(self.sd_module, nn.Linear):
            self.ops = F.linear
        elif isinstance(self.sd_module, nn.LayerNorm):
            self.ops = F.layer_norm
            self.extra_kwargs = {'normalized_shape': self.sd_module.normalized_shape, 'eps': self.sd_module.eps}
        elif isinstance(self.sd_module, nn.GroupNorm):
            self.ops = F.group_norm
            self.extra_kwargs = {'num_groups': self.sd_module.num_groups, 'eps': self.sd_module.eps}
        self.dim = None
        self.bias = weights.w.get("bias")
        self.alpha = weights.w["alpha"].item() if "alpha" in weights.w else None
        self.scale = weights.w["scale"].item() if "scale" in weights.w else None
        self.dora_scale = weights.w.get("dora_scale", None)
        self.dora_norm_dims = len(self.shape) - 1 if self.shape is not None else 0

    def multiplier(self):
        """mirrors NetworkModule.multiplier — te_multiplier if 'transformer' in sd_key[:20], else unet_multiplier."""
        if 'transformer' in self.sd_key[:20]:
            return self.network.te_multiplier
        return self.network.unet_multiplier

    def calc_scale(self):
        """mirrors NetworkModule.calc_scale — scale, else alpha/dim, else 1.0."""
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def apply_weight_decompose(self, updown, orig_weight):
        orig_weight = orig_weight.to(updown.dtype)
        dora_scale = self.dora_scale.to(device=orig_weight.device, dtype=updown.dtype)
        updown = updown.to(orig_weight.device)
        merged = updown + orig_weight
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).reshape(merged.shape[1], *[1] * self.dora_norm_dims).transpose(0, 1)
        return merged * (dora_scale / norm) - orig_weight

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        """mirrors NetworkModule.finalize_updown — (+file bias) · calc_scale() (DoRA) · multiplier(); ex_bias · multiplier() only."""
        if self.bias is not None:
            updown = updown.reshape(self.bias.shape)
            updown += self.bias.to(orig_weight.device, dtype=updown.dtype)
            updown = updown.reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.size().numel() == updown.size().numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        updown = updown * self.calc_scale()
        if self.dora_scale is not None:
            updown = self.apply_weight_decompose(updown, orig_weight)
        return updown * self.multiplier(), ex_bias

    def calc_updown(self, target):
        raise NotImplementedError()

    def forward(self, x, y):
        """mirrors NetworkModule.forward — y + ops(x, ΔW, Δb) against the CURRENT sd_module.weight."""
        if self.ops is None:
            raise NotImplementedError()
        updown, ex_bias = self.calc_updown(self.sd_module.weight)
        return y + self.ops(x, weight=updown, bias=ex_bias, **self.extra_kwargs)
