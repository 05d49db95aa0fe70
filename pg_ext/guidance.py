"""The guidance equation of Personalization Guidance (Park et al., ICCV 2025, arXiv 2508.00319, eq. 6).

    pred = pred_weak + s · (pred_cond − pred_weak)

`pred_cond` is the personalized model θ' on the prompt, `pred_weak` the weak model
θ_ω = (1 − ω)·θ + ω·θ' on the unconditional (negative or empty) prompt, `s` the CFG scale.
ω = 1 makes θ_ω = θ' and the equation plain classifier-free guidance. The equation is the same in
ε, v and x0 space (all rows of a step share x and σ), so the host's own CFG combination is kept and PG
only changes where the unconditional prediction comes from.
"""
from __future__ import annotations

from typing import Sequence

import torch


def interpolate(base: torch.Tensor, personalized: torch.Tensor, omega: float) -> torch.Tensor:
    """θ_ω = (1 − ω)·θ + ω·θ' for one tensor (the reference the per-layer corrections must match)."""
    return torch.lerp(base.float(), personalized.float(), omega).to(personalized.dtype)


def personalization_guidance(pred_cond: torch.Tensor, pred_weak: torch.Tensor, scale: float) -> torch.Tensor:
    """PG's combination: pred_weak + s·(pred_cond − pred_weak) (CFG with the weak model as uncond)."""
    return pred_weak + scale * (pred_cond - pred_weak)


def combine_and_prompts(cond_rows: torch.Tensor, weak_rows: torch.Tensor,
                        conds: Sequence[Sequence[tuple[int, float]]], scale: float) -> torch.Tensor:
    """A1111's combination for AND prompts, with the weak rows as uncond.

    cond_rows [R, ...], weak_rows [B, ...], conds[i] = [(row in cond_rows, weight), ...] for image i:
    out[i] = weak[i] + Σ_j w_j·s·(cond[j] − weak[i]).
    """
    out = weak_rows.clone()
    for i, parts in enumerate(conds):
        for row, weight in parts:
            out[i] += (cond_rows[row] - weak_rows[i]) * (weight * scale)
    return out
