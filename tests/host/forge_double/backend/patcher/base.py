"""ModelPatcher: LoRAs as `lora_patches[(filename, strength_patch, strength_model, online_mode)] =
{key: [[strength_patch, patch, strength_model, offset, function], ...]}`, one loader per model."""
from .lora import LoraLoader


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.lora_patches = {}
        self.model_options = {"transformer_options": {}}
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.lora_patches = self.lora_patches.copy()  # a new dict of the same per-file dicts
        n.model_options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        return n

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        keys = {k for k, _ in self.model.named_parameters()}
        mine = {}
        for key, patch in patches.items():
            if key in keys:
                mine.setdefault(key, []).append([strength_patch, patch, strength_model, None, None])
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = mine
        return set(mine)

    def load(self):
        """What loading the model does: the loader merges this patcher's LoRAs (memory_management.py:518)."""
        self.lora_loader.refresh(self.lora_patches)
