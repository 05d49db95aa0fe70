"""v-prediction diffusion on a cosine schedule: training loss and a deterministic DDIM sampler.

x_t = α_t·x0 + σ_t·ε with α_t = cos(πt/2), σ_t = sin(πt/2); the network predicts v = α_t·ε − σ_t·x0
(Salimans & Ho 2022), which is what made the miniature learn at this budget.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

T_MIN, T_MAX = 1e-3, 0.999


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) of the cosine schedule, shaped [B, 1, 1, 1]."""
    t = t.view(-1, 1, 1, 1)
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


def v_loss(unet, x0: torch.Tensor, context: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example MSE [B] between the predicted and the true v at uniformly drawn times."""
    t = torch.rand(x0.shape[0], generator=generator) * (T_MAX - T_MIN) + T_MIN
    noise = torch.randn(x0.shape, generator=generator)
    a, s = alpha_sigma(t)
    target = a * noise - s * x0
    return (unet(a * x0 + s * noise, t, context) - target).pow(2).flatten(1).mean(1)


def ddim_sample(predict_v: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                steps: int = 20, progress: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Deterministic DDIM from t=1 to 0; `predict_v(x, t)` returns the (guided) v for x [B, 3, 32, 32]."""
    x = noise
    times = torch.linspace(T_MAX, 0.0, steps + 1)
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        a, s = alpha_sigma(t)
        v = predict_v(x, t)
        x0 = (a * x - s * v).clamp(-1, 1)
        eps = (x - a * x0) / s
        a_next, s_next = alpha_sigma(times[i + 1].expand(x.shape[0]))
        x = a_next * x0 + s_next * eps
        if progress:
            progress()
    return x.clamp(-1, 1)
