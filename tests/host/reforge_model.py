"""A tiny model served the way reForge serves one (test helper, not a host file).

`ReforgeModel` holds what `modules_forge/forge_loader.py` puts on `sd_model` (forge_objects,
forge_objects_original, forge_objects_after_applying_lora) around our double's patchers, and
`apply_loras` does what the Lora extension does per job: from the original patchers, one
`load_lora_for_models` per LoRA, in prompt order. Patches are made here with seeded random factors.
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.join(HERE, "reforge_double"), os.path.join(HERE, "..", "unit")):
    if path not in sys.path:
        sys.path.insert(0, path)

from ldm_patched.modules.lora import LoHaAdapter, LoRAAdapter  # noqa: E402
from ldm_patched.modules.model_base import BaseModel  # noqa: E402
from ldm_patched.modules.model_patcher import UnetPatcher  # noqa: E402
from ldm_patched.modules.sd import CLIP, load_lora_for_models  # noqa: E402
from fork_objects import ForgeObjects, lora_file, lora_hash  # noqa: E402
from tiny_sd import DIM, TextLayers  # noqa: E402
from tiny_unet import TinyUNet  # noqa: E402


TextModel = TextLayers  # token ids [B, T] -> [B, T, DIM] through Linear and LayerNorm (CLIP's kinds)


class ReforgeModel:
    def __init__(self, seed=0, chunks_per_call=None):
        torch.manual_seed(seed)
        unet = TinyUNet(channels=16, context_dim=DIM).requires_grad_(False)
        text = TextModel().requires_grad_(False)
        self.forge_objects = ForgeObjects(UnetPatcher(BaseModel(unet, chunks_per_call)), CLIP(text))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    @property
    def unet_module(self):
        return self.forge_objects_original.unet.model.diffusion_model

    @property
    def text_module(self):
        return self.forge_objects_original.clip.cond_stage_model

    def apply_loras(self, loras, names=("subject", "style", "third")):
        """loras: [(patches, unet strength, clip strength)] in prompt order, loaded from the files of `names`
        (networks.py:84-104: the record in `current_lora_hash`, then one `load_lora_for_models` per LoRA)."""
        self.lora_files = {lora_file(n): patches for n, (patches, _, _) in zip(names, loras)}
        targets = [[lora_file(n), u, t] for n, (_, u, t) in zip(names, loras)]
        self.current_lora_hash = lora_hash(targets)
        unet, clip = self.forge_objects_original.unet, self.forge_objects_original.clip
        for filename, strength_unet, strength_clip in targets:
            unet, clip = load_lora_for_models(unet, clip, self.lora_files[filename], strength_unet, strength_clip,
                                              filename=filename)
        self.forge_objects = ForgeObjects(unet, clip)
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def reset_for_pass(self):
        """processing.py:1458: every pass starts from the LoRA chain's end."""
        self.forge_objects = self.forge_objects_after_applying_lora.shallow_copy()


def _factors(gen, out_shape, in_shape, rank, scale):
    return torch.randn(*out_shape, generator=gen) * scale, torch.randn(*in_shape, generator=gen) * scale


def lora_patches(model, seed, kind="lora", rank=2, scale=0.3, only=None):
    """key -> patch for every Linear/Conv2d of the UNet and text model (`only`: a filter on the key)."""
    gen = torch.Generator().manual_seed(seed)
    roots = {"diffusion_model.": model.unet_module, "": model.text_module}
    patches = {}
    for prefix, root in roots.items():
        for name, layer in root.named_modules():
            key = f"{prefix}{name}.weight"
            if only is not None and not only(key):
                continue
            if isinstance(layer, nn.Linear):
                out_shape, in_shape = (layer.out_features, rank), (rank, layer.in_features)
            elif isinstance(layer, nn.Conv2d):
                out_shape, in_shape = (layer.out_channels, rank, 1, 1), (rank, layer.in_channels, *layer.kernel_size)
            else:
                continue
            up, down = _factors(gen, out_shape, in_shape, rank, scale)
            if kind == "lora":
                patches[key] = LoRAAdapter((up, down, float(rank) * 0.5, None, None, None))
            elif kind == "dora":
                norms = layer.weight.flatten(1).norm(dim=1) * 1.2
                patches[key] = LoRAAdapter((up, down, float(rank), None, norms, None))
            elif kind == "loha":
                up2, down2 = _factors(gen, out_shape, in_shape, rank, scale)
                patches[key] = LoHaAdapter((up.flatten(1), down.flatten(1), float(rank), up2.flatten(1), down2.flatten(1)))
    return patches


class ReforgeSD(ReforgeModel):
    """`shared.sd_model` as reForge serves it to the A1111-style modules: text in, conditioning out."""

    def __init__(self, seed=0, chunks_per_call=None):
        from tiny_sd import TextEncoder

        torch.manual_seed(seed)
        unet = TinyUNet(channels=16, context_dim=DIM).requires_grad_(False)
        text = TextEncoder().requires_grad_(False)
        self.forge_objects = ForgeObjects(UnetPatcher(BaseModel(unet, chunks_per_call)), CLIP(text))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.lowvram, self.sd_checkpoint_info = False, None
        self.current_lora_hash = None

    def get_learned_conditioning(self, texts):
        clip = self.forge_objects.clip
        clip.patcher.patch_model()  # modules_forge/forge_clip.py:12 loads the CLIP patcher before each encode
        return clip.cond_stage_model(texts)

    def modules(self):
        return list(self.unet_module.modules()) + list(self.text_module.modules())

    def state_dict(self):
        return {**{f"unet.{k}": v for k, v in self.unet_module.state_dict().items()},
                **{f"text.{k}": v for k, v in self.text_module.state_dict().items()}}


class ReforgeNetworks:
    """The Lora extension as reForge has it: names in `loaded_networks`, weights only as patcher entries."""

    def __init__(self, model):
        self.model, self.available, self.loaded_networks = model, {}, []

    def register(self, name, patches):
        self.available[name] = patches

    def activate(self, p, found):
        """networks.py:58-104: from the original patchers, one load_lora_for_models per LoRA, in order."""
        import types

        model = self.model
        self.loaded_networks = [types.SimpleNamespace(name=name, mentioned_name=name,
                                                      network_on_disk=types.SimpleNamespace(filename=lora_file(name)))
                                for name, _ in found]
        strengths = [float(args[0]) if args else 1.0 for _, args in found]
        if model.current_lora_hash == lora_hash([[lora_file(name), s, s] for (name, _), s in zip(found, strengths)]):
            return  # networks.py:91-92: the same LoRAs as last time keep their patchers (and entries)
        model.forge_objects_original.unet.unpatch_model()  # loading another patcher restores the weights first
        model.forge_objects_original.clip.patcher.unpatch_model()
        model.apply_loras([(self.available[name], s, s) for (name, _), s in zip(found, strengths)],
                          names=[name for name, _ in found])

    def load_lora_state_dict(self, filename):
        return dict(self.model.lora_files[filename])

    @staticmethod
    def load_lora_for_models(*args, **kwargs):
        return load_lora_for_models(*args, **kwargs)
