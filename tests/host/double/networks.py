"""Double of the built-in Lora extension (extensions-builtin/Lora), as PG reads it.

Claims:
- `loaded_networks`: the prompt's networks in prompt order, each with the attributes in
  contract.NETWORK_ATTRS; `modules` maps a layer's `network_layer_name` to a module object.
- Layer names are module paths with "." -> "_": text-encoder layers from `cond_stage_model.wrapped`, UNet
  layers from `sd_model.model` (so they start with "diffusion_model_"). On SDXL (`sd_model.is_sdxl`) the
  text-encoder layers are those under `conditioner.embedders[i].wrapped` of every embedder that has one,
  named "<i>_<path>" (e.g. "0_transformer_...", "1_model_transformer_...").
- A LoRA module has up_model/down_model (torch layers), alpha, dim, scale, bias/mid_model/dora_scale None;
  calc_scale() = scale, else alpha/dim, else 1; multiplier() = te_multiplier for layers whose key has
  "transformer" in its first 20 characters, else unet_multiplier; calc_updown(w) returns
  (up @ down reshaped to w's shape * calc_scale() * multiplier(), None).
- A layer's forward (the double has no `lora_functional` mode) first merges the networks into its weights in place: on the
  first merge it keeps a CPU copy in `network_weights_backup` / `network_bias_backup`; whenever the
  (name, te, unet, dyn_dim) list differs from `network_current_names` it restores the backup, then adds each
  network's calc_updown(current weight) in order. load_state_dict forgets the backup and the merge state.
"""
import zlib

import torch
from torch import nn

from modules import shared

loaded_networks = []
available = {}  # name -> (filename, factory(net, layer, layer_name) -> module or None)
_in_memory = {}
LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = self.alias = name
        self.filename = filename


class Network:
    def __init__(self, name, network_on_disk):
        self.name, self.network_on_disk, self.mentioned_name = name, network_on_disk, None
        self.te_multiplier = self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}


class LoraModule:
    mid_model = bias = dora_scale = scale = None

    def __init__(self, net, layer, key, rank=4, alpha=2.0, seed=0, std=0.3):
        self.network, self.sd_module, self.sd_key = net, layer, key
        gen = torch.Generator().manual_seed(seed)
        out_ch, in_ch = layer.weight.shape[:2]
        conv = isinstance(layer, nn.Conv2d)
        self.down_model = (nn.Conv2d(in_ch, rank, layer.kernel_size, layer.stride, layer.padding, bias=False) if conv
                           else nn.Linear(in_ch, rank, bias=False))
        self.up_model = nn.Conv2d(rank, out_ch, 1, bias=False) if conv else nn.Linear(rank, out_ch, bias=False)
        with torch.no_grad():
            for m in (self.down_model, self.up_model):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
        self.alpha, self.dim = alpha, rank

    def multiplier(self):
        return self.network.te_multiplier if "transformer" in self.sd_key[:20] else self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        return self.alpha / self.dim if self.alpha is not None and self.dim else 1.0

    def calc_updown(self, orig_weight):
        up, down = self.up_model.weight.flatten(1), self.down_model.weight.flatten(1)
        updown = (up @ down).reshape(orig_weight.shape)
        return updown * self.calc_scale() * self.multiplier(), None


def lora_factory(rank=4, alpha=2.0, seed=0, std=0.3):
    """Plain LoRA on every Linear/Conv2d layer, seeded per layer."""
    def make(net, layer, key):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            return LoraModule(net, layer, key, rank, alpha, seed + zlib.crc32(key.encode()) % 1000, std)
    return make


def register_network(name, factory=None, filename=None):
    available[name] = (filename or f"/loras/{name}.safetensors", factory or lora_factory())
    _in_memory.pop(name, None)


def assign_network_names(sd_model):
    if getattr(sd_model, "is_sdxl", False):
        roots = [(f"{i}_", e.wrapped) for i, e in enumerate(sd_model.conditioner.embedders) if hasattr(e, "wrapped")]
    else:
        roots = [("", getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model))]
    for prefix, root in roots + [("", sd_model.model)]:
        for path, module in root.named_modules():
            module.network_layer_name = prefix + path.replace(".", "_")


def load_networks(names, te_multipliers, unet_multipliers):
    """Make `loaded_networks` the given networks; a network stays the same object while it stays available."""
    assign_network_names(shared.sd_model)
    loaded_networks.clear()
    for name, te, unet in zip(names, te_multipliers, unet_multipliers):
        if name not in available:
            continue
        net = _in_memory.get(name)
        if net is None:
            filename, factory = available[name]
            net = _in_memory[name] = Network(name, NetworkOnDisk(name, filename))
            for module in list(shared.sd_model.modules()):
                key = getattr(module, "network_layer_name", None)
                made = factory(net, module, key) if key and isinstance(module, LAYER_TYPES) else None
                if made is not None:
                    net.modules[key] = made
        net.mentioned_name, net.te_multiplier, net.unet_multiplier = name, te, unet
        loaded_networks.append(net)


def activate(p, names_and_args):
    """`<lora:name:te[:unet]>` tags of the prompt, as parsed by processing."""
    load_networks([n for n, _ in names_and_args], [float(a[0]) if a else 1.0 for _, a in names_and_args],
                  [float(a[1]) if len(a) > 1 else (float(a[0]) if a else 1.0) for _, a in names_and_args])


def merge_into(layer):
    key = getattr(layer, "network_layer_name", None)
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)
    if key is None or getattr(layer, "network_current_names", ()) == wanted:
        return
    with torch.no_grad():
        if getattr(layer, "network_weights_backup", None) is None and wanted:
            layer.network_weights_backup = layer.weight.detach().to("cpu", copy=True)
            layer.network_bias_backup = None if layer.bias is None else layer.bias.detach().to("cpu", copy=True)
        if getattr(layer, "network_weights_backup", None) is not None:
            layer.weight.copy_(layer.network_weights_backup)
            if layer.network_bias_backup is not None:
                layer.bias.copy_(layer.network_bias_backup)
        for net in loaded_networks:
            module = net.modules.get(key)
            if module is not None:
                updown, ex_bias = module.calc_updown(layer.weight)
                layer.weight.add_(updown.to(layer.weight))
                if ex_bias is not None:
                    layer.bias.add_(ex_bias.to(layer.bias))
    layer.network_current_names = wanted


_originals = {}


def install():
    """Patch the layer classes like the extension does at load."""
    for cls in LAYER_TYPES:
        if cls in _originals:
            continue
        _originals[cls] = (cls.forward, cls._load_from_state_dict)

        def forward(self, *args, _orig=cls.forward, **kwargs):
            merge_into(self)
            return _orig(self, *args, **kwargs)

        def load(self, *args, _orig=cls._load_from_state_dict, **kwargs):
            self.network_current_names, self.network_weights_backup, self.network_bias_backup = (), None, None
            return _orig(self, *args, **kwargs)
        cls.forward, cls._load_from_state_dict = forward, load


def uninstall():
    for cls, (forward, load) in _originals.items():
        cls.forward, cls._load_from_state_dict = forward, load
    _originals.clear()
    loaded_networks.clear()
    available.clear()
    _in_memory.clear()
