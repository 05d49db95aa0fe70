"""DreamBooth on the miniature (Ruiz et al. 2023): "a sks square" from 5 images, class prompt "a square".

Prior preservation adds the loss on images the base generated from the class prompt (weight 1), which
keeps the class and the rest of the language from drifting; `prior=False` turns it off. The text
encoder stays frozen, so personalization lives in the UNet only (as a UNet LoRA does in the WebUI).
"""
from __future__ import annotations

import copy
import time

import torch

from . import data
from .diffusion import v_loss
from .guide import Guidance, Personalized, encode, sample
from .io import load_base, save_finetune_delta, weights_path
from .lora import attach_hooks, lora_parameters, new_lora, save_lora

INSTANCE_PROMPT = data.subject_prompt()
CLASS_PROMPT = "a " + data.CLASS_NOUN
FT = dict(steps=300, lr=3e-4)
LORA = dict(steps=300, lr=2e-3, rank=4)


def class_images(unet, text, n: int = 64, seed: int = 1) -> torch.Tensor:
    """[n, 3, 32, 32] prior-preservation images: the base sampled on the class prompt with CFG 3."""
    base = Personalized("base", unet, unet, text, {}, dense=False)
    return sample(base, [CLASS_PROMPT] * n, Guidance("cfg", 3.0), seed=seed, steps=20)


def dreambooth_step(unet, instance, prior, ctx_inst, ctx_class, gen, use_prior: bool) -> torch.Tensor:
    """Instance loss (+ prior loss on as many class images, drawn at random) for one step."""
    loss = v_loss(unet, instance, ctx_inst, gen).mean()
    if use_prior:
        pick = torch.randint(0, prior.shape[0], (instance.shape[0],), generator=gen)
        loss = loss + v_loss(unet, prior[pick], ctx_class, gen).mean()
    return loss


def finetune(unet, text, prior, use_prior: bool, seed: int = 0, steps: int = FT["steps"], lr: float = FT["lr"]):
    """Full fine-tune of every UNet parameter; returns θ'."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tuned = copy.deepcopy(unet).train().requires_grad_(True)
    instance = data.subject_images()
    ctx_inst = encode(text, [INSTANCE_PROMPT] * len(instance))
    ctx_class = encode(text, [CLASS_PROMPT] * len(instance))
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = dreambooth_step(tuned, instance, prior, ctx_inst, ctx_class, gen, use_prior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return tuned.eval().requires_grad_(False)


def train_lora(unet, text, prior, use_prior: bool, seed: int = 0, steps: int = LORA["steps"],
               lr: float = LORA["lr"], rank: int = LORA["rank"]):
    """Rank-r LoRA/LoCon on attention, feed-forward and convolutions; returns {layer name: LowRankDelta}."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lora = new_lora(unet, rank, seed)
    handles = attach_hooks(unet, lora)
    instance = data.subject_images()
    ctx_inst = encode(text, [INSTANCE_PROMPT] * len(instance))
    ctx_class = encode(text, [CLASS_PROMPT] * len(instance))
    opt = torch.optim.AdamW(lora_parameters(lora), lr=lr, weight_decay=0.0)
    try:
        for _ in range(steps):
            loss = dreambooth_step(unet, instance, prior, ctx_inst, ctx_class, gen, use_prior)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    for d in lora.values():
        d.down, d.up = d.down.detach(), d.up.detach()
    return lora


def personalize_all(seed: int = 0, kinds: tuple = ("ft", "lora")) -> None:
    """Train and save the shipped personalizations (both kinds, with and without prior), timing each."""
    unet, text = load_base()
    start = time.time()
    prior = class_images(unet, text, seed=seed + 1)
    print(f"class images: {time.time() - start:.0f}s", flush=True)
    for use_prior in (True, False):
        suffix = "" if use_prior else "_noprior"
        if "ft" in kinds:
            start = time.time()
            tuned = finetune(unet, text, prior, use_prior, seed)
            save_finetune_delta(tuned, unet, weights_path("ft" + suffix))
            print(f"ft{suffix}: {time.time() - start:.0f}s", flush=True)
        if "lora" in kinds:
            start = time.time()
            save_lora(train_lora(unet, text, prior, use_prior, seed), weights_path("lora" + suffix))
            print(f"lora{suffix}: {time.time() - start:.0f}s", flush=True)
