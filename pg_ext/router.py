"""Routes the rows of each UNet call: flags the weak rows for the `WeakBranch` before the call, clears after.

A forward pre-hook on the UNet module reads the call's conditioning (`context`, the cross-attention
input of ldm's and sgm's UNetModel, and of the project's miniature model), asks the step's `StepRows`
which rows are weak and reads them to the host once (`WeakRows`): the per-layer hooks then work from
those ints without touching the device. Calls that bypass the module's `__call__` (ControlNet
reference-only passes) see no rows and run as the personalized model.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .branch import WeakBranch
from .rows import StepRows, WeakRows


def context_argument(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The cross-attention conditioning of a UNetModel call: `forward(x, timesteps, context, ...)`."""
    context = kwargs.get("context")
    if context is None and len(args) >= 3:
        context = args[2]
    return context if isinstance(context, torch.Tensor) else None


def _replaced(args: tuple, kwargs: dict, name: str, position: int, value: torch.Tensor) -> tuple[tuple, dict]:
    """The call's arguments with argument `name` (positional index `position`) set to `value`."""
    if name in kwargs or len(args) <= position:
        return args, {**kwargs, name: value}
    return args[:position] + (value,) + args[position + 1:], kwargs


def _batch_rows(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else kwargs.get("x")
    return x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 0


class UNetRowRouter:
    """Owns the UNet-level hooks of one sampling run; `begin_step` is called once per CFG step.

    Counts the active steps: `steps_routed` found weak rows in their calls; `steps_missed` ran uncond
    rows through the UNet (more rows than the step's cond rows) but none of them could be identified;
    `steps_mixed` are the missed steps whose uncond the host had already replaced by the weak conditioning
    (`begin_step(uncond_is_weak=True)`): their uncond rows ran θ' on θ_ω's text, neither PG nor CFG.

    The weak conditioning (a text encoder at θ_ω, or the empty prompt) is put into the weak rows of each
    call by the pre-hook, once they are identified (`begin_step(weak_context=...)`), so a step whose rows
    cannot be identified is plain CFG through and through.
    """

    def __init__(self, unet: nn.Module, branch: WeakBranch,
                 context_of: Callable[[tuple, dict], Optional[torch.Tensor]] = context_argument):
        self.unet, self.branch, self.context_of = unet, branch, context_of
        self.step: Optional[StepRows] = None
        self.steps_routed = 0
        self.steps_missed = 0
        self.steps_mixed = 0
        self._uncond_is_weak = False
        self._weak_context: Optional[torch.Tensor] = None
        self._weak_y: Optional[torch.Tensor] = None
        self._rows_in_step = 0  # rows of the current step through UNet calls
        self._weak_in_step = 0  # of those, identified as weak
        self._handles: list = []

    def attach(self) -> "UNetRowRouter":
        if not self._handles:
            self._handles = [
                self.unet.register_forward_pre_hook(self._before_call, with_kwargs=True),
                self.unet.register_forward_hook(self._after_call),
            ]
            self.branch.attach()
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.branch.detach()
        self._end_step()

    def __enter__(self) -> "UNetRowRouter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def begin_step(self, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor],
                   weak_context: Optional[torch.Tensor] = None, weak_y: Optional[torch.Tensor] = None,
                   uncond_is_weak: bool = False) -> None:
        """Start a CFG step with its cond [R, T, D] and uncond [B, T', D] rows; None = plain CFG step.

        `weak_context` [B, T', D] (and `weak_y` [B, V], sgm's pooled vector) replace the conditioning of
        the weak rows found in each call, row by row from the uncond row each one equals (`can_place`
        says when they fit). `uncond_is_weak`: the host's uncond is already the weak conditioning.
        """
        self._end_step()
        self.step = None if cond is None or uncond is None else StepRows(cond, uncond)
        self._weak_context, self._weak_y = (weak_context, weak_y) if self.step is not None else (None, None)
        self._uncond_is_weak = uncond_is_weak

    def can_place(self, weak_context: torch.Tensor, uncond: torch.Tensor) -> bool:
        """Whether `begin_step` can put `weak_context` into the weak rows: one row per uncond row, as many
        tokens (the host then pads or splits the call as it does for its own uncond)."""
        return tuple(weak_context.shape) == tuple(uncond.shape)

    def pending(self) -> tuple[int, int]:
        """(routed, missed) of the step in progress so far: (0, 0) when it is inactive or had no uncond rows."""
        step = self.step
        if step is None or step.uncond.shape[0] == 0:
            return 0, 0
        if self._weak_in_step:
            return 1, 0
        return (0, 1) if self._rows_in_step > step.cond.shape[0] else (0, 0)

    def pending_mixed(self) -> int:
        """Of `pending()`'s missed step, 1 when the host's uncond was already the weak conditioning."""
        return self.pending()[1] if self._uncond_is_weak else 0

    def _end_step(self) -> None:
        self.steps_mixed += self.pending_mixed()
        routed, missed = self.pending()
        self.steps_routed += routed
        self.steps_missed += missed
        self.step = None
        self._rows_in_step = self._weak_in_step = 0
        self._weak_context = self._weak_y = None
        self._uncond_is_weak = False

    def _before_call(self, module: nn.Module, args: tuple, kwargs: dict):
        rows, replaced = None, None
        if self.step is not None:
            self._rows_in_step += _batch_rows(args, kwargs)
            context = self.context_of(args, kwargs)
            if context is not None:
                mask, source = self.step.weak_rows_and_sources(context)
                found = WeakRows.from_mask(mask)
                self._weak_in_step += found.count or 0
                rows = found if found.count else None
                if rows is not None and self._weak_context is not None:
                    replaced = self._with_weak_conditioning(args, kwargs, context, mask, source)
        self.branch.rows = rows
        return replaced

    def _with_weak_conditioning(self, args: tuple, kwargs: dict, context: torch.Tensor, mask: torch.Tensor,
                                source: torch.Tensor) -> tuple[tuple, dict]:
        """The call's arguments with the weak rows' `context` (its first T' tokens: beyond them is the host's
        padding) and `y` taken from the weak conditioning of the uncond row each equals. Device ops only."""
        weak = self._weak_context
        tokens = min(weak.shape[1], context.shape[1])
        rows = weak[:, :tokens].to(device=context.device, dtype=context.dtype).index_select(0, source)
        placed = context.clone()
        placed[:, :tokens] = torch.where(mask[:, None, None], rows, context[:, :tokens])
        args, kwargs = _replaced(args, kwargs, "context", 2, placed)
        y = kwargs.get("y", args[3] if len(args) > 3 else None)
        if self._weak_y is not None and isinstance(y, torch.Tensor):
            weak_y = self._weak_y.to(device=y.device, dtype=y.dtype).index_select(0, source)
            args, kwargs = _replaced(args, kwargs, "y", 3, torch.where(mask[:, None], weak_y, y))
        return args, kwargs

    def _after_call(self, module: nn.Module, args: tuple, output):
        self.branch.rows = None
        return None


class MarkedRowRouter(UNetRowRouter):
    """A router for hosts that mark the rows of each UNet call themselves (ComfyUI's `cond_or_uncond`).

    `rows_of(args, kwargs)` turns one call's marks into `WeakRows` (host-side ints, no device sync), or
    None when the call carries no marks. The step's conditioning is not compared: `begin_step` only
    says whether the step is active. A call without marks in an active step counts the step as missed.
    """

    def __init__(self, unet: nn.Module, branch: WeakBranch,
                 rows_of: Callable[[tuple, dict], Optional[WeakRows]]):
        super().__init__(unet, branch)
        self.rows_of = rows_of
        self._active = False
        self._unmarked_in_step = 0

    def begin_step(self, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor],
                   weak_context: Optional[torch.Tensor] = None, weak_y: Optional[torch.Tensor] = None,
                   uncond_is_weak: bool = False) -> None:
        """Start a CFG step; it is active when both branches are given (as `UNetRowRouter.begin_step`).

        The host's marks find the rows whatever their conditioning, so the weak conditioning goes into the
        host's uncond before the step (`can_place` is False) and `weak_context` is never given here.
        """
        self._end_step()
        self._active = cond is not None and uncond is not None
        self._uncond_is_weak = uncond_is_weak

    def can_place(self, weak_context: torch.Tensor, uncond: torch.Tensor) -> bool:
        return False

    def pending(self) -> tuple[int, int]:
        """A step with a call whose rows could not be read is missed, even if other calls were corrected."""
        if not self._active:
            return 0, 0
        if self._unmarked_in_step:
            return 0, 1
        return (1, 0) if self._weak_in_step else (0, 0)

    def pending_mixed(self) -> int:
        """A missed step is neither PG nor CFG when its uncond was the weak encoding or some of its calls
        were corrected (only the unreadable calls ran θ')."""
        missed = self.pending()[1]
        return missed if self._uncond_is_weak or self._weak_in_step else 0

    def _end_step(self) -> None:
        super()._end_step()
        self._active = False
        self._unmarked_in_step = 0

    def _before_call(self, module: nn.Module, args: tuple, kwargs: dict):
        rows = None
        if self._active:
            found = self.rows_of(args, kwargs)
            if found is None:
                self._unmarked_in_step += 1
            elif found.count:
                self._weak_in_step += found.count
                rows = found
        self.branch.rows = rows
        return None
