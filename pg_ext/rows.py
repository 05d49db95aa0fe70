"""Which rows of a UNet call belong to the weak (unconditional) branch.

The host batches CFG's rows its own way: cond rows first and uncond rows last in A1111, but split into
chunks when "batch cond/uncond" is off, a separate call for the uncond rows when token lengths differ,
no uncond rows at all on NGMS / skip-early-CFG steps, tiles repeated by Tiled Diffusion. So a row is
identified by its *conditioning*, compared with the step's cond and uncond tensors; only a row whose
conditioning equals both (the prompt equals the negative prompt) falls back to its position in the
step's row layout [R cond rows, B uncond rows], counted over the calls of the step.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch


def _matches(context: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """[n] bool: row i of `context` [n, T, D] equals some row of `refs` [m, T', D] on their common tokens.

    Comparing the common prefix covers the host's padding (uncond padded with empty-prompt chunks or
    truncated to the cond length).
    """
    if refs.shape[0] == 0 or context.shape[0] == 0 or context.shape[-1] != refs.shape[-1]:
        return torch.zeros(context.shape[0], dtype=torch.bool, device=context.device)
    tokens = min(context.shape[1], refs.shape[1])
    a = context[:, None, :tokens]
    b = refs[None, :, :tokens].to(device=context.device, dtype=context.dtype)
    return (a == b).flatten(2).all(dim=2).any(dim=1)


@dataclasses.dataclass
class StepRows:
    """The conditioning of one CFG step: R cond rows and B uncond rows, in the host's order."""

    cond: torch.Tensor
    uncond: torch.Tensor
    seen: int = 0  # rows of this step already passed through UNet calls

    @property
    def total(self) -> int:
        return self.cond.shape[0] + self.uncond.shape[0]

    def weak_rows(self, context: torch.Tensor) -> torch.Tensor:
        """[n] bool mask of the weak rows of one UNet call whose conditioning is `context` [n, T, D]."""
        n = context.shape[0]
        is_uncond = _matches(context, self.uncond)
        is_cond = _matches(context, self.cond)
        position = (torch.arange(n, device=context.device) + self.seen) % max(self.total, 1)
        by_position = position >= self.cond.shape[0]
        self.seen += n
        return is_uncond & (~is_cond | by_position)


def row_index(mask: Optional[torch.Tensor], rows: int) -> Optional[torch.Tensor]:
    """Indices of weak rows for a layer whose batch has `rows` rows.

    Layers inside attention may see the call's batch repeated b-major (HyperTile splits each image
    into tiles along the batch): the mask is expanded with repeat_interleave. None when there is
    nothing to correct or the batch does not fit the mask.
    """
    if mask is None:
        return None
    n = mask.shape[0]
    if n == 0 or rows % n != 0:
        return None
    if rows != n:
        mask = mask.repeat_interleave(rows // n)
    index = mask.nonzero().flatten()
    return index if index.numel() else None
