"""Seeded training of the shipped weights: the base model, then DreamBooth personalizations of "sks".

    python -m pg_mini.train base            # base text-to-image model (~17 min, 1 thread)
    python -m pg_mini.train personalize     # full fine-tune and LoRA, with and without prior preservation
    python -m pg_mini.train judge           # subject classifier used by the scores (seconds)
    python -m pg_mini.train all
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import time

import torch

from . import data
from .diffusion import v_loss
from .io import UNET_CH, save_base, weights_path
from .model import TextEncoder, UNet


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def base_batch(rng: random.Random, size: int, p_uncond: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, 32, 32] and token ids [B, T]; a tenth of prompts emptied so CFG has an uncond."""
    pairs = [data.base_example(rng) for _ in range(size)]
    prompts = ["" if rng.random() < p_uncond else p for _, p in pairs]
    return torch.stack([img for img, _ in pairs]), torch.stack([data.tokenize(p) for p in prompts])


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def train_base(steps: int = 1800, batch: int = 32, lr: float = 8e-4, seed: int = 0) -> tuple[UNet, TextEncoder]:
    """Train UNet and text encoder jointly on procedural prompts; returns the EMA weights."""
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    unet, text = UNet(UNET_CH), TextEncoder()
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    start, running = time.time(), 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        images, ids = base_batch(rng, batch)
        loss = v_loss(unet, images, text(ids), gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text, decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            print(f"base step {step:5d} loss {running:.4f} {time.time() - start:6.0f}s", flush=True)
    return ema_unet.eval().requires_grad_(False), ema_text.eval().requires_grad_(False)


def main(argv=None) -> None:
    """Command line: which models to train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["base", "personalize", "judge", "all"])
    parser.add_argument("--base-steps", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=["ft", "lora"], choices=["ft", "lora"],
                        help="personalize: which kinds to (re)train")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # leave the machine's other core free
    if args.what in ("base", "all"):
        start = time.time()
        unet, text = train_base(args.base_steps, seed=args.seed)
        save_base(unet, text)
        print(f"base trained in {time.time() - start:.0f}s -> {weights_path('base')}")
    if args.what in ("judge", "all"):
        from .score import save_judge, train_judge
        start = time.time()
        save_judge(train_judge(seed=args.seed), weights_path("judge"))
        print(f"judge trained in {time.time() - start:.0f}s -> {weights_path('judge')}")
    if args.what in ("personalize", "all"):
        from .personalize import personalize_all
        personalize_all(seed=args.seed, kinds=tuple(args.kinds))


if __name__ == "__main__":
    main()
