"""Saving and loading the shipped weights (safetensors) and building the models from them."""
from __future__ import annotations

import copy
import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from .model import TextEncoder, UNet

WEIGHTS = os.environ.get("PG_MINI_WEIGHTS", os.path.join(os.path.dirname(__file__), "weights"))
UNET_CH = (32, 48, 64)


def weights_path(name: str) -> str:
    """Path of a shipped file, e.g. 'base' -> pg_mini/weights/base.safetensors."""
    return os.path.join(WEIGHTS, f"{name}.safetensors")


def save_base(unet: UNet, text: TextEncoder, path: Optional[str] = None) -> None:
    """Base model: UNet ('unet.*') and text encoder ('text.*') in float32."""
    tensors = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"text.{k}": v.detach().contiguous() for k, v in text.state_dict().items()})
    save_file(tensors, path or weights_path("base"))


def load_base(path: Optional[str] = None) -> tuple[UNet, TextEncoder]:
    """The base UNet and text encoder, in eval mode, gradients off."""
    tensors = load_file(path or weights_path("base"))
    unet, text = UNet(UNET_CH), TextEncoder()
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    for m in (unet, text):
        m.eval().requires_grad_(False)
    return unet, text


def save_finetune_delta(tuned: UNet, base: UNet, path: str) -> None:
    """A full fine-tune stored as θ' − θ in float16 (changed tensors only): half the bytes, exact D."""
    base_sd = base.state_dict()
    diff = {k: (v.detach() - base_sd[k]).half().contiguous() for k, v in tuned.state_dict().items()
            if not torch.equal(v, base_sd[k])}
    save_file(diff, path)


def load_finetune(base: UNet, path: str) -> UNet:
    """θ' = θ + stored difference, as a new UNet (the base is left untouched)."""
    tuned = copy.deepcopy(base)
    diff = load_file(path)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name in diff:
                p.add_(diff[name].float())
    return tuned
