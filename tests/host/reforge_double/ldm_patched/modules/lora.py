"""The host's merge function: a key's entries applied in order to a weight (contract, not a copy)."""
import torch


class LoRAAdapter:
    """A plain LoRA (or DoRA/LoCon when dora_scale/mid are set): weights = (up, down, alpha, mid, dora_scale, reshape)."""

    name = "lora"

    def __init__(self, weights):
        self.weights = weights

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32,
                         original_weight=None):
        up, down, alpha, mid, dora_scale, reshape = self.weights
        ratio = alpha / down.shape[0] if alpha is not None else 1.0
        diff = (up.flatten(1).to(intermediate_dtype) @ down.flatten(1).to(intermediate_dtype)).reshape(weight.shape)
        if dora_scale is None:
            return weight + function(strength * ratio * diff).to(weight.dtype)
        # DoRA: the tuned direction rescaled to dora_scale's column norms, blended in by strength (not additive)
        tuned = weight + function(ratio * diff)
        norm = tuned.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
        decomposed = tuned * (dora_scale.reshape(norm.shape) / norm)
        return weight + strength * (decomposed - weight)


class LoHaAdapter:
    """LoHa: (w1a @ w1b) ⊙ (w2a @ w2b) · alpha / rank; weights = (w1a, w1b, alpha, w2a, w2b)."""

    name = "loha"

    def __init__(self, weights):
        self.weights = weights

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32,
                         original_weight=None):
        w1a, w1b, alpha, w2a, w2b = self.weights
        ratio = alpha / w1b.shape[0] if alpha is not None else 1.0
        diff = ((w1a @ w1b) * (w2a @ w2b)).reshape(weight.shape).to(intermediate_dtype)
        return weight + function(strength * ratio * diff).to(weight.dtype)


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
    for strength, patch, strength_model, offset, function in patches:
        function = function or (lambda t: t)
        if offset is not None:
            raise NotImplementedError("the double states no offset entries (SD1.5/SDXL UNets have none)")
        if strength_model != 1.0:
            weight = weight * strength_model
        if hasattr(patch, "calculate_weight"):
            weight = patch.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                            original_weights)
        elif isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "diff":
            weight = weight + function(strength * patch[1][0].to(weight))
        else:
            raise ValueError(f"the double does not know patch {patch!r} on {key}")
    return weight
