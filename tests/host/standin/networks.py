"""Stand-in for extensions-builtin/Lora/networks.py (A1111 v1.10.1): loaded_networks, layer names, in-place weight merging.

Differences from the host, on purpose:
  * networks come from in-memory specs (`register_network`) instead of files;
  * the class-level patches of torch.nn.Linear/Conv2d/GroupNorm/LayerNorm/MultiheadAttention `forward`
    and `_load_from_state_dict` are installed by `install()` and removed by `uninstall()` (the host's
    lora_script.py patches at import and undoes only on UI reload);
  * `uninstall()` also restores every layer of shared.sd_model from its backup (the host never needs to).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Union

import torch

import network
import network_full
import network_hada
import network_lora
from modules import devices, errors, extra_networks, shared

shared.options_templates.update(shared.options_section(('extra_networks', "Extra Networks"), {
    "sd_lora": shared.OptionInfo("None", "Add network to prompt"),
    "lora_preferred_name": shared.OptionInfo("Alias from file", "When adding to prompt, refer to Lora by"),
    "lora_add_hashes_to_infotext": shared.OptionInfo(True, "Add Lora hashes to infotext"),
    "lora_bundled_ti_to_infotext": shared.OptionInfo(True, "Add Lora name as TI hashes for bundled Textual Inversion"),
    "lora_show_all": shared.OptionInfo(False, "Always show all networks on the Lora page"),
    "lora_hide_unknown_for_versions": shared.OptionInfo([], "Hide networks of unknown versions for model versions"),
    "lora_in_memory_limit": shared.OptionInfo(0, "Number of Lora networks to keep cached in memory"),
    "lora_not_found_warning_console": shared.OptionInfo(False, "Lora not found warning in console"),
    "lora_not_found_gradio_warning": shared.OptionInfo(False, "Lora not found warning popup in webui"),
    "extra_networks_default_multiplier": shared.OptionInfo(1.0, "Default multiplier for extra networks"),
}))
shared.options_templates.update(shared.options_section(('compatibility', "Compatibility"), {
    "lora_functional": shared.OptionInfo(False, "Lora/Networks: use old method that takes longer when you have multiple Loras active and produces same results as kohya-ss/sd-webui-additional-networks extension"),
}))

module_types = [
    network_lora.ModuleTypeLora(),
    network_hada.ModuleTypeHada(),
    network_full.ModuleTypeFull(),
]

extra_network_lora = None
available_networks = {}
available_network_aliases = {}
loaded_networks = []
loaded_bundle_embeddings = {}
networks_in_memory = {}
available_network_hash_lookup = {}
forbidden_network_aliases = {}
originals = None

network_specs = {}
"""Stand-in registry: name → spec dict (kind, rank, seed, targets, alpha, std, weights) from register_network."""

DEFAULT_TARGETS = (
    "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_q",
    "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k",
    "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_v",
    "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_out_0",
    "diffusion_model_input_blocks_1_1_proj_in",
    "diffusion_model_input_blocks_1_0_in_layers_2",
    "diffusion_model_middle_block_1_transformer_blocks_0_attn1_to_v",
    "diffusion_model_output_blocks_0_1_transformer_blocks_0_ff_net_2",
    "transformer_text_model_encoder_layers_0_self_attn_q_proj",
    "transformer_text_model_encoder_layers_0_mlp_fc1",
)
"""Layers a registered network touches unless `targets` is given: UNet cross/self-attention, FF, 1x1 and 3x3 convs, and the text encoder."""


def assign_network_names_to_compvis_modules(sd_model):
    """mirrors networks.assign_network_names_to_compvis_modules — names from shared.sd_model's TE (.wrapped) and sd_model.model."""
    network_layer_mapping = {}
    cond_stage_model = getattr(shared.sd_model.cond_stage_model, 'wrapped', shared.sd_model.cond_stage_model)
    for name, module in cond_stage_model.named_modules():
        network_name = name.replace(".", "_")
        network_layer_mapping[network_name] = module
        module.network_layer_name = network_name
    for name, module in shared.sd_model.model.named_modules():
        network_name = name.replace(".", "_")
        network_layer_mapping[network_name] = module
        module.network_layer_name = network_name
    sd_model.network_layer_mapping = network_layer_mapping


def register_network(name, kind="lora", rank=4, seed=0, targets=None, alpha=None, std=0.1, weights=None, alias=None):
    """Stand-in only: declare a network that load_networks can find by `name` (or `alias`).

    kind: "lora" (lora_up/lora_down, +alpha), "loha" (hada_w1_a/b, hada_w2_a/b), "full" (diff, diff_b).
    Random weights (normal, `std`, torch.Generator(seed)) are made for `targets` (layer names, default
    DEFAULT_TARGETS) when the network is loaded against shared.sd_model; `weights` = {layer name: {key: tensor}}
    gives explicit tensors instead. Returns the NetworkOnDisk.
    """
    sha = hashlib.sha256(f"{name}:{kind}:{rank}:{seed}".encode()).hexdigest()
    nod = network.NetworkOnDisk(name, f"standin-loras/{name}.safetensors", metadata={"ss_output_name": alias} if alias else None, sha256=sha)
    network_specs[name] = dict(kind=kind, rank=rank, seed=seed, targets=tuple(targets or DEFAULT_TARGETS), alpha=alpha, std=std, weights=weights)
    available_networks[name] = nod
    available_network_aliases[name] = nod
    available_network_aliases[nod.alias] = nod
    available_network_hash_lookup[nod.shorthash] = nod
    networks_in_memory.pop(name, None)
    return nod


def unregister_all():
    """Stand-in only: forget every registered network (and those in memory/loaded)."""
    network_specs.clear()
    available_networks.clear()
    available_network_aliases.clear()
    available_network_hash_lookup.clear()
    networks_in_memory.clear()
    loaded_networks.clear()


def _spec_weights(spec, layer_name, module):
    g = torch.Generator().manual_seed(spec["seed"] * 100003 + sum(map(ord, layer_name)))
    std, r, kind = spec["std"], spec["rank"], spec["kind"]

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * std

    w = module.weight
    if kind == "lora":
        if isinstance(module, torch.nn.Conv2d):
            res = {"lora_down.weight": rnd(r, w.shape[1], *w.shape[2:]), "lora_up.weight": rnd(w.shape[0], r, 1, 1)}
        else:
            res = {"lora_down.weight": rnd(r, w.shape[1]), "lora_up.weight": rnd(w.shape[0], r)}
        if spec["alpha"] is not None:
            res["alpha"] = torch.tensor(float(spec["alpha"]))
        return res
    if kind == "loha":
        out_dim, in_dim = w.shape[0], w[0].numel()
        res = {"hada_w1_a": rnd(out_dim, r), "hada_w1_b": rnd(r, in_dim), "hada_w2_a": rnd(out_dim, r), "hada_w2_b": rnd(r, in_dim)}
        if spec["alpha"] is not None:
            res["alpha"] = torch.tensor(float(spec["alpha"]))
        return res
    if kind == "full":
        res = {"diff": rnd(*w.shape)}
        if getattr(module, "bias", None) is not None:
            res["diff_b"] = rnd(*module.bias.shape)
        return res
    raise ValueError(f"unknown network kind {kind}")


def load_network(name, network_on_disk):
    """mirrors networks.load_network — groups weights per target layer and asks module_types in order (lora, hada, full)."""
    net = network.Network(name, network_on_disk)
    net.mtime = 0.0
    spec = network_specs[name]
    if not getattr(shared.sd_model, "network_layer_mapping", None):
        assign_network_names_to_compvis_modules(shared.sd_model)
    mapping = shared.sd_model.network_layer_mapping
    layer_weights = spec["weights"] or {key: None for key in spec["targets"]}
    for key, w in layer_weights.items():
        sd_module = mapping.get(key, None)
        if sd_module is None:
            logging.debug(f"Network {network_on_disk.filename} didn't match keys: {key}")
            continue
        w = dict(w) if w is not None else _spec_weights(spec, key, sd_module)
        nw = network.NetworkWeights(network_key="lora_" + key, sd_key=key, w=w, sd_module=sd_module)
        for nettype in module_types:
            net_module = nettype.create_module(net, nw)
            if net_module is not None:
                net.modules[key] = net_module
                break
        else:
            raise AssertionError(f"Could not find a module type (out of {', '.join([x.__class__.__name__ for x in module_types])}) that would accept those keys: {', '.join(w)}")
    return net


def purge_networks_from_memory():
    while len(networks_in_memory) > shared.opts.lora_in_memory_limit and len(networks_in_memory) > 0:
        name = next(iter(networks_in_memory))
        networks_in_memory.pop(name, None)


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    """mirrors networks.load_networks — clears and refills loaded_networks; unknown names → 'Lora not found' comment.

    Note the host default: dyn_dim = 1.0 when dyn_dims is not passed at all (activate always passes it).
    """
    already_loaded = {net.name: net for net in loaded_networks if net.name in names}
    loaded_networks.clear()
    networks_on_disk = [available_networks.get(name, None) if name.lower() in forbidden_network_aliases else available_network_aliases.get(name, None) for name in names]
    failed_to_load_networks = []
    for i, (network_on_disk, name) in enumerate(zip(networks_on_disk, names)):
        net = already_loaded.get(name, None)
        if network_on_disk is not None:
            if net is None:
                net = networks_in_memory.get(name)
            if net is None:
                try:
                    net = load_network(network_on_disk.name, network_on_disk)
                    networks_in_memory.pop(name, None)
                    networks_in_memory[name] = net
                except Exception as e:
                    errors.display(e, f"loading network {network_on_disk.filename}")
                    continue
            net.mentioned_name = name
            network_on_disk.read_hash()
        if net is None:
            failed_to_load_networks.append(name)
            logging.info(f"Couldn't find network with name {name}")
            continue
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)
    if failed_to_load_networks:
        from modules import sd_hijack
        sd_hijack.model_hijack.comments.append(f'Lora not found: {", ".join(failed_to_load_networks)}')
    purge_networks_from_memory()


def allowed_layer_without_weight(layer):
    return isinstance(layer, torch.nn.LayerNorm) and not layer.elementwise_affine


def store_weights_backup(weight):
    """mirrors networks.store_weights_backup — a CPU copy."""
    if weight is None:
        return None
    return weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj, field, weight):
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self: Union[torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention]):
    """mirrors networks.network_restore_weights_from_backup (note: a layer created without bias gets bias=None back)."""
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    with torch.no_grad():
        if weights_backup is not None:
            if isinstance(self, torch.nn.MultiheadAttention):
                restore_weights_backup(self, 'in_proj_weight', weights_backup[0])
                restore_weights_backup(self.out_proj, 'weight', weights_backup[1])
            else:
                restore_weights_backup(self, 'weight', weights_backup)
        if isinstance(self, torch.nn.MultiheadAttention):
            restore_weights_backup(self.out_proj, 'bias', bias_backup)
        else:
            restore_weights_backup(self, 'bias', bias_backup)


def network_apply_weights(self: Union[torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention]):
    """mirrors networks.network_apply_weights — lazily, at the layer's next forward: back up once (CPU), and when the wanted
    (name, te, unet, dyn) tuple changed, restore from backup and add every loaded network's calc_updown in order."""
    network_layer_name = getattr(self, 'network_layer_name', None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)

    weights_backup = getattr(self, "network_weights_backup", None)
    if weights_backup is None and wanted_names != ():
        if current_names != () and not allowed_layer_without_weight(self):
            raise RuntimeError(f"{network_layer_name} - no backup weights found and current weights are not unchanged")
        if isinstance(self, torch.nn.MultiheadAttention):
            weights_backup = (store_weights_backup(self.in_proj_weight), store_weights_backup(self.out_proj.weight))
        else:
            weights_backup = store_weights_backup(self.weight)
        self.network_weights_backup = weights_backup

    bias_backup = getattr(self, "network_bias_backup", None)
    if bias_backup is None and wanted_names != ():
        if isinstance(self, torch.nn.MultiheadAttention) and self.out_proj.bias is not None:
            bias_backup = store_weights_backup(self.out_proj.bias)
        elif getattr(self, 'bias', None) is not None:
            bias_backup = store_weights_backup(self.bias)
        else:
            bias_backup = None
        if bias_backup is not None and current_names != ():
            raise RuntimeError("no backup bias found and current bias are not unchanged")
        self.network_bias_backup = bias_backup

    if current_names != wanted_names:
        network_restore_weights_from_backup(self)
        for net in loaded_networks:
            module = net.modules.get(network_layer_name, None)
            if module is not None and hasattr(self, 'weight'):
                try:
                    with torch.no_grad():
                        weight = self.weight
                        bias = self.bias
                        updown, ex_bias = module.calc_updown(weight)
                        if len(weight.shape) == 4 and weight.shape[1] == 9:
                            updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, 5))
                        self.weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
                        if ex_bias is not None and hasattr(self, 'bias'):
                            if self.bias is None:
                                self.bias = torch.nn.Parameter(ex_bias).to(self.weight.dtype)
                            else:
                                self.bias.copy_((bias + ex_bias).to(dtype=self.bias.dtype))
                except RuntimeError as e:
                    logging.debug(f"Network {net.name} layer {network_layer_name}: {e}")
                    if extra_network_lora is not None:
                        extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
                continue
            if module is None:
                continue
            if extra_network_lora is not None:
                extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
        self.network_current_names = wanted_names


def network_forward(org_module, input, original_forward):
    """mirrors networks.network_forward (opts.lora_functional): original weights, then y = module.forward(x, y) per network."""
    if len(loaded_networks) == 0:
        return original_forward(org_module, input)
    input = devices.cond_cast_unet(input)
    network_restore_weights_from_backup(org_module)
    network_reset_cached_weight(org_module)
    y = original_forward(org_module, input)
    network_layer_name = getattr(org_module, 'network_layer_name', None)
    for lora in loaded_networks:
        module = lora.modules.get(network_layer_name, None)
        if module is None:
            continue
        y = module.forward(input, y)
    return y


def network_reset_cached_weight(self):
    """mirrors networks.network_reset_cached_weight — forgets backups and current names."""
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def _make_forward(cls_name):
    def forward(self, input):
        original = getattr(originals, cls_name + "_forward")
        if shared.opts.lora_functional:
            return network_forward(self, input, original)
        network_apply_weights(self)
        return original(self, input)
    forward.__name__ = f"network_{cls_name}_forward"
    return forward


def _make_load_state_dict(cls_name):
    def load_state_dict(self, *args, **kwargs):
        network_reset_cached_weight(self)
        return getattr(originals, cls_name + "_load_state_dict")(self, *args, **kwargs)
    load_state_dict.__name__ = f"network_{cls_name}_load_state_dict"
    return load_state_dict


network_Linear_forward = _make_forward("Linear")
network_Conv2d_forward = _make_forward("Conv2d")
network_GroupNorm_forward = _make_forward("GroupNorm")
network_LayerNorm_forward = _make_forward("LayerNorm")
network_Linear_load_state_dict = _make_load_state_dict("Linear")
network_Conv2d_load_state_dict = _make_load_state_dict("Conv2d")
network_GroupNorm_load_state_dict = _make_load_state_dict("GroupNorm")
network_LayerNorm_load_state_dict = _make_load_state_dict("LayerNorm")


def network_MultiheadAttention_forward(self, *args, **kwargs):
    network_apply_weights(self)
    return originals.MultiheadAttention_forward(self, *args, **kwargs)


def network_MultiheadAttention_load_state_dict(self, *args, **kwargs):
    network_reset_cached_weight(self)
    return originals.MultiheadAttention_load_state_dict(self, *args, **kwargs)


_PATCHED = ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "MultiheadAttention")


class LoraPatches:
    """Plays lora_patches.LoraPatches: holds the original methods (attributes <Class>_forward / <Class>_load_state_dict)."""

    def __init__(self):
        for cls_name in _PATCHED:
            cls = getattr(torch.nn, cls_name)
            setattr(self, cls_name + "_forward", cls.forward)
            setattr(self, cls_name + "_load_state_dict", cls._load_from_state_dict)
            cls.forward = globals()[f"network_{cls_name}_forward"]
            cls._load_from_state_dict = globals()[f"network_{cls_name}_load_state_dict"]

    def undo(self):
        for cls_name in _PATCHED:
            cls = getattr(torch.nn, cls_name)
            cls.forward = getattr(self, cls_name + "_forward")
            cls._load_from_state_dict = getattr(self, cls_name + "_load_state_dict")


def restore_all_weights(model):
    """Stand-in only: put every layer of `model` back to its backup and forget the backups."""
    for module in model.modules():
        if getattr(module, "network_layer_name", None) is not None:
            network_restore_weights_from_backup(module)
            network_reset_cached_weight(module)


def install():
    """Stand-in only: patch torch layer classes, register the 'lora' extra network, name the layers of shared.sd_model."""
    global originals, extra_network_lora
    if originals is not None:
        raise RuntimeError("patch for networks is already applied")  # like modules.patches.patch
    import extra_networks_lora
    originals = LoraPatches()
    extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(extra_network_lora)
    extra_networks.register_extra_network_alias(extra_network_lora, "lyco")
    if shared.sd_model is not None:
        assign_network_names_to_compvis_modules(shared.sd_model)


def uninstall():
    """Stand-in only: undo install(); loaded_networks is cleared and shared.sd_model's weights restored from backups."""
    global originals, extra_network_lora
    loaded_networks.clear()
    if shared.sd_model is not None:
        restore_all_weights(shared.sd_model)
    if originals is not None:
        originals.undo()
        originals = None
    extra_networks.extra_network_registry.pop("lora", None)
    extra_networks.extra_network_aliases.pop("lyco", None)
    extra_network_lora = None
