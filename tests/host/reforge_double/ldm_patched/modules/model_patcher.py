"""ModelPatcher as PG's adapter sees it: LoRAs as per-key entry lists, merged with a backup, shared by clones."""
import collections

import torch

from fork_objects import key_seed as string_to_seed

from .. import float as host_float
from . import lora

Backup = collections.namedtuple("Backup", ["weight", "inplace_update"])


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0):
        self.model = model
        self.load_device, self.offload_device, self.size = load_device, offload_device, size
        self.patches = {}
        self.backup = {}
        self.model_options = {"transformer_options": {}}
        self.parent = None

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        known = self.model.state_dict()
        added = []
        for key, patch in patches.items():
            if key in known:
                self.patches.setdefault(key, []).append((strength_patch, patch, strength_model, None, None))
                added.append(key)
        return added

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}  # new lists, the same entry tuples
        n.backup = self.backup  # shared: whichever clone merged, the original is kept once
        n.model_options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        n.parent = self
        return n

    def patch_model(self):
        """Merge every patched key (what loading the model does): the original goes to `backup` first."""
        with torch.no_grad():
            for key, entries in self.patches.items():
                path, _, name = key.rpartition(".")
                module = self.model.get_submodule(path)
                if key not in self.backup:
                    self.backup[key] = Backup(getattr(module, name).detach().clone(), False)
                merged = lora.calculate_weight(entries, self.backup[key].weight.float().clone(), key)
                merged = host_float.stochastic_rounding(merged, self.backup[key].weight.dtype, seed=string_to_seed(key))
                setattr(module, name, torch.nn.Parameter(merged, requires_grad=False))
        return self.model

    def unpatch_model(self):
        with torch.no_grad():
            for key, saved in self.backup.items():
                path, _, name = key.rpartition(".")
                setattr(self.model.get_submodule(path), name, torch.nn.Parameter(saved.weight.clone(), requires_grad=False))
        self.backup.clear()


class UnetPatcher(ModelPatcher):
    """reForge's UNet patcher (modules_forge/unet_patcher.py): a ModelPatcher whose clone is a UnetPatcher."""
