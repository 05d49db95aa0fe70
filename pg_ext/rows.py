"""Which rows of a UNet call belong to the weak (unconditional) branch.

The host batches CFG's rows its own way: cond rows first and uncond rows last in A1111, but split into
chunks when "batch cond/uncond" is off, a separate call for the uncond rows when token lengths differ,
no uncond rows at all on NGMS / skip-early-CFG steps, tiles repeated by Tiled Diffusion. So a row is
identified by its *conditioning*, compared with the step's cond and uncond tensors; only a row whose
conditioning equals both (the prompt equals the negative prompt) falls back to its position in the
step's row layout [R cond rows, B uncond rows], counted over the calls of the step.

The weak rows are read to the host once per UNet call (`WeakRows.from_mask`, one device->host copy);
every hooked layer then gets a `RowLayout` for its own batch size built from those ints: narrow views
for a block of rows, or index tensors made once per call; no layer ever waits for the device.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch


def _match_table(context: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """[n, m] bool: row i of `context` [n, T, D] equals row j of `refs` [m, T', D] on their common tokens.

    Comparing the common prefix covers the host's padding (uncond padded with empty-prompt chunks or
    truncated to the cond length).
    """
    if refs.shape[0] == 0 or context.shape[0] == 0 or context.shape[-1] != refs.shape[-1]:
        return torch.zeros(context.shape[0], refs.shape[0], dtype=torch.bool, device=context.device)
    tokens = min(context.shape[1], refs.shape[1])
    a = context[:, None, :tokens]
    b = refs[None, :, :tokens].to(device=context.device, dtype=context.dtype)
    return (a == b).flatten(2).all(dim=2)


def _matches(context: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """[n] bool: row i of `context` equals some row of `refs` (see `_match_table`)."""
    return _match_table(context, refs).any(dim=1)


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
        return self.weak_rows_and_sources(context)[0]

    def weak_rows_and_sources(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`weak_rows`, [n] long: the uncond row each row of the call equals; 0 where it equals none).

        On the device, no sync: the source picks each weak row's own weak conditioning (per-image negative prompts).
        """
        n = context.shape[0]
        uncond_table = _match_table(context, self.uncond)
        is_uncond = uncond_table.any(dim=1)
        is_cond = _matches(context, self.cond)
        position = (torch.arange(n, device=context.device) + self.seen) % max(self.total, 1)
        by_position = position >= self.cond.shape[0]
        self.seen += n
        source = uncond_table.to(torch.uint8).argmax(dim=1) if self.uncond.shape[0] else torch.zeros_like(position)
        return is_uncond & (~is_cond | by_position), source


@dataclasses.dataclass
class RowLayout:
    """Weak rows of one layer's batch of `rows` rows: a block [first, first + count) or index tensors."""

    rows: int
    count: int
    first: Optional[int]  # set when the weak rows are one contiguous block (A1111's usual layout)
    weak: Optional[torch.Tensor] = None  # [count] long, on the layer's device; None for a block
    kept: Optional[torch.Tensor] = None  # [rows - count] long, the other rows in order; None for a block

    @property
    def is_block(self) -> bool:
        return self.first is not None


class WeakRows:
    """The weak rows of one UNet call of `n` rows, as host-side ints (n=None: every row of every layer).

    Layers inside attention may see the call's batch repeated b-major (HyperTile splits each image into
    tiles along the batch): a layer with rows = k·n gets row i's k copies. A layer whose batch is not a
    multiple of n gets None (left as is).
    """

    def __init__(self, weak: Sequence[int], n: Optional[int]):
        self.weak = tuple(int(i) for i in weak)
        self.n = n
        self._layouts: dict[tuple, Optional[RowLayout]] = {}

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "WeakRows":
        """From an [n] bool mask: the one device->host copy of a UNet call."""
        flags = mask.detach().to("cpu")
        return cls(flags.nonzero().flatten().tolist(), flags.shape[0])

    @classmethod
    def from_chunk_marks(cls, marks: Sequence[int], rows: int, weak_mark: int = 1,
                         chunk_rows: Optional[int] = None) -> Optional["WeakRows"]:
        """From host-side chunk marks (ComfyUI's `cond_or_uncond`: one int per chunk of `chunk_rows` rows).

        A call of rows = k · len(marks) · chunk_rows with k > 1 is k tiles of the marked batch, tile-major
        (MultiDiffusion with Tile Batch Size k: every tile carries all of the batch's rows). Without
        `chunk_rows` the chunks are taken as rows / len(marks). None when the rows fit neither layout.
        """
        marks = list(marks)
        if not marks or rows <= 0:
            return None
        size = chunk_rows if chunk_rows is not None else (rows // len(marks) if rows % len(marks) == 0 else 0)
        block = size * len(marks)
        if size <= 0 or rows % block != 0:
            return None
        weak = [c * size + i for c, mark in enumerate(marks) if mark == weak_mark for i in range(size)]
        return cls([tile * block + i for tile in range(rows // block) for i in weak], rows)

    @classmethod
    def every_row(cls) -> "WeakRows":
        return cls((), None)

    @property
    def count(self) -> Optional[int]:
        """Weak rows of the call (None: all rows, whatever the batch)."""
        return None if self.n is None else len(self.weak)

    def layout(self, rows: int, device: torch.device) -> Optional[RowLayout]:
        """The layout for a layer whose batch has `rows` rows on `device`; None when nothing to correct."""
        key = (rows, device)
        if key not in self._layouts:
            self._layouts[key] = self._build(rows, device)
        return self._layouts[key]

    def _build(self, rows: int, device: torch.device) -> Optional[RowLayout]:
        if self.n is None:
            return RowLayout(rows, rows, 0) if rows else None
        if not self.weak or self.n == 0 or rows % self.n != 0:
            return None
        k = rows // self.n
        weak = [i * k + j for i in self.weak for j in range(k)]
        if weak[-1] - weak[0] + 1 == len(weak):
            return RowLayout(rows, len(weak), weak[0])
        chosen = set(weak)
        kept = [i for i in range(rows) if i not in chosen]
        # built once per call and device from host ints; non_blocking: no wait for the device queue
        return RowLayout(rows, len(weak), None, _long(weak, device), _long(kept, device))


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)
