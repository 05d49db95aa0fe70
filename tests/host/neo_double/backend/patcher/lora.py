"""merge_lora_to_weight: a key's entries applied in order, in place, to the weight it is given (the caller
passes a copy). Patches are weight-adapter objects (`name`, `weights`, `calculate_weight`) or ("diff", (w,))."""
import torch

from fork_objects import key_seed as string_to_seed  # noqa: F401 (lora.py: the seed of a key's rounding)


class LoRAAdapter:
    name = "lora"

    def __init__(self, up, down, alpha, mid=None, dora_scale=None, reshape=None):
        self.weights = (up, down, alpha, mid, dora_scale, reshape)

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, computation_dtype):
        up, down, alpha, mid, dora_scale, reshape = self.weights
        if mid is not None or dora_scale is not None or reshape is not None:
            raise NotImplementedError("the double states plain LoRAs only")
        ratio = alpha / down.shape[0] if alpha is not None else 1.0
        diff = (up.flatten(1).to(computation_dtype) @ down.flatten(1).to(computation_dtype)).reshape(weight.shape)
        weight += function(strength * ratio * diff).to(weight.dtype)
        return weight


class LoHaAdapter:
    name = "loha"

    def __init__(self, w1a, w1b, alpha, w2a, w2b):
        self.weights = (w1a, w1b, alpha, w2a, w2b, None, None, None)

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, computation_dtype):
        w1a, w1b, alpha, w2a, w2b = self.weights[:5]
        diff = ((w1a @ w1b) * (w2a @ w2b)).reshape(weight.shape) * (alpha / w1b.shape[0])
        weight += function(strength * diff.to(computation_dtype)).to(weight.dtype)
        return weight


@torch.no_grad()
def merge_lora_to_weight(patches, weight, key, computation_dtype=torch.float32):
    for strength, v, strength_model, offset, function in (p[:5] for p in patches):
        function = function or (lambda t: t)
        if offset is not None:
            raise NotImplementedError("the double states no offset entries")
        if strength_model != 1.0:
            weight *= strength_model
        if hasattr(v, "calculate_weight"):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function, computation_dtype)
        elif v[0] == "diff":
            weight += function(strength * v[1][0].to(weight))
        else:
            raise ValueError(f"the double does not know patch {v!r} on {key}")
    return weight
