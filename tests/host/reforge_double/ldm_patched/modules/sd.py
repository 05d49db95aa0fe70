"""CLIP holder and load_lora_for_models: each LoRA clones both patchers and adds its entries."""
from .model_patcher import ModelPatcher


class CLIP:
    def __init__(self, cond_stage_model=None, no_init=False):
        if no_init:
            return
        self.cond_stage_model = cond_stage_model
        self.patcher = ModelPatcher(cond_stage_model)

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        return n


def load_lora_for_models(model, clip, patches, strength_model, strength_clip, filename="default"):
    """`patches`: key -> patch object, keys of both models (UNet keys start with 'diffusion_model.')."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip  # nothing to add: no clone (so no link in the chain)
    new_model = model.clone()
    if strength_model != 0:
        new_model.add_patches(patches, strength_model)
    new_clip = clip.clone()
    if strength_clip != 0:
        new_clip.patcher.add_patches(patches, strength_clip)
    return new_model, new_clip
