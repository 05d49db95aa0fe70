"""merge_lora_to_weight and the loader's merge: entries applied in order, original kept in `backup`."""
import torch


def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):
    weight = weight.to(dtype=computation_dtype).clone()
    for strength, v, strength_model, offset, function in patches:
        function = function or (lambda t: t)
        if offset is not None:
            raise NotImplementedError("the double states no offset entries")
        if strength_model != 1.0:
            weight = weight * strength_model
        kind, data = v
        if kind == "lora":  # (up, down, alpha, mid, dora_scale)
            up, down, alpha, mid, dora_scale = data
            ratio = alpha / down.shape[0] if alpha is not None else 1.0
            diff = (up.flatten(1).to(computation_dtype) @ down.flatten(1).to(computation_dtype)).reshape(weight.shape)
            if dora_scale is not None:
                tuned = weight + function(ratio * diff)
                norm = tuned.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
                weight = weight + strength * (tuned * (dora_scale.reshape(norm.shape) / norm) - weight)
            else:
                weight = weight + function(strength * ratio * diff)
        elif kind == "loha":  # (w1a, w1b, alpha, w2a, w2b)
            w1a, w1b, alpha, w2a, w2b = data
            diff = ((w1a @ w1b) * (w2a @ w2b)).reshape(weight.shape) * (alpha / w1b.shape[0])
            weight = weight + function(strength * diff)
        elif kind == "diff":
            weight = weight + function(strength * data[0].to(weight))
        else:
            raise ValueError(f"the double does not know patch type {kind!r} on {key}")
    return weight


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}

    @torch.no_grad()
    def refresh(self, lora_patches):
        """Restore the originals, then merge each key's entries, concatenated over lora_patches in order."""
        for key, saved in self.backup.items():
            self._set(key, saved)
        self.backup = {}
        merged = {}
        for (_, _, _, online_mode), by_key in lora_patches.items():
            if online_mode:
                raise NotImplementedError("the double states the offline merge only")
            for key, entries in by_key.items():
                merged[key] = merged.get(key, []) + entries
        for key, entries in merged.items():
            weight = self._get(key)
            self.backup[key] = weight.detach().clone()
            self._set(key, merge_lora_to_weight(entries, weight, key).to(weight.dtype))

    def _get(self, key):
        path, _, name = key.rpartition(".")
        return getattr(self.model.get_submodule(path), name)

    def _set(self, key, value):
        path, _, name = key.rpartition(".")
        setattr(self.model.get_submodule(path), name, torch.nn.Parameter(value.clone(), requires_grad=False))
