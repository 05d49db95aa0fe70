"""ModelPatcher (ComfyUI's, as Neo ports it): LoRAs as flat per-key entry lists
`(strength_patch, patch, strength_model, offset, function, online_mode)`; the file name is not kept; clones
copy the lists, share `backup` and point to their `parent`. Loading merges offline entries into the
parameter (original in `backup[key].weight`) and gives online ones to the layer's `weight_function`, for
modules whose parameters are all their own only: a key on a raw parameter of a module with children (Wan's
block `modulation`) is kept in `patches` and never merged."""
import collections

import torch

from ..float import stochastic_rounding
from .lora import merge_lora_to_weight, string_to_seed

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, *, current_device=None):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.patches = {}
        self.backup = {}
        self.model_options = {"transformer_options": {}}
        self.parent = None

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.backup = self.backup
        n.model_options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        n.parent = self
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0, *, filename=None, online_mode=None):
        known = self.model.state_dict()
        added = []
        for key, patch in patches.items():
            if key in known:
                self.patches.setdefault(key, []).append((strength_patch, patch, strength_model, None, None, online_mode))
                added.append(key)
        return added

    def _layer(self, key):
        path, _, name = key.rpartition(".")
        return self.model.get_submodule(path), name

    def load(self):
        """What memory_management.load_model_gpu does to this patcher's model (weights restored first)."""
        self.unpatch_model()
        for key, entries in self.patches.items():
            module, name = self._layer(key)
            if any(True for child in module.children() for _ in child.parameters()):
                continue  # not a module the loader lists: its own parameters stay as they are
            if any(e[5] for e in entries):  # online: merged per forward from the unpatched parameter
                module.weight_function = [lambda w, k=key, e=entries: merge_lora_to_weight(e, w.float().clone(), k).to(w.dtype)]
            else:
                original = getattr(module, name).detach().clone()
                self.backup[key] = Backup(original, False)
                merged = merge_lora_to_weight(entries, original.float().clone(), key)
                merged = stochastic_rounding(merged, original.dtype, seed=string_to_seed(key))
                setattr(module, name, torch.nn.Parameter(merged, requires_grad=False))
        return self.model

    def unpatch_model(self):
        for key in list(self.backup):
            module, name = self._layer(key)
            setattr(module, name, torch.nn.Parameter(self.backup.pop(key).weight.clone(), requires_grad=False))
        for module in self.model.modules():
            vars(module).pop("weight_function", None)
