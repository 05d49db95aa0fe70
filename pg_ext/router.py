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


def _batch_rows(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else kwargs.get("x")
    return x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 0


class UNetRowRouter:
    """Owns the UNet-level hooks of one sampling run; `begin_step` is called once per CFG step.

    Counts the active steps: `steps_routed` found weak rows in their calls; `steps_missed` ran uncond
    rows through the UNet (more rows than the step's cond rows) but none of them could be identified.
    """

    def __init__(self, unet: nn.Module, branch: WeakBranch,
                 context_of: Callable[[tuple, dict], Optional[torch.Tensor]] = context_argument):
        self.unet, self.branch, self.context_of = unet, branch, context_of
        self.step: Optional[StepRows] = None
        self.steps_routed = 0
        self.steps_missed = 0
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

    def begin_step(self, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor]) -> None:
        """Start a CFG step with its cond [R, T, D] and uncond [B, T', D] rows; None = plain CFG step."""
        self._end_step()
        self.step = None if cond is None or uncond is None else StepRows(cond, uncond)

    def pending(self) -> tuple[int, int]:
        """(routed, missed) of the step in progress so far: (0, 0) when it is inactive or had no uncond rows."""
        step = self.step
        if step is None or step.uncond.shape[0] == 0:
            return 0, 0
        if self._weak_in_step:
            return 1, 0
        return (0, 1) if self._rows_in_step > step.cond.shape[0] else (0, 0)

    def _end_step(self) -> None:
        routed, missed = self.pending()
        self.steps_routed += routed
        self.steps_missed += missed
        self.step = None
        self._rows_in_step = self._weak_in_step = 0

    def _before_call(self, module: nn.Module, args: tuple, kwargs: dict):
        rows = None
        if self.step is not None:
            self._rows_in_step += _batch_rows(args, kwargs)
            context = self.context_of(args, kwargs)
            if context is not None:
                found = WeakRows.from_mask(self.step.weak_rows(context))
                self._weak_in_step += found.count or 0
                rows = found if found.count else None
        self.branch.rows = rows
        return None

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

    def begin_step(self, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor]) -> None:
        """Start a CFG step; it is active when both branches are given (as `UNetRowRouter.begin_step`)."""
        self._end_step()
        self._active = cond is not None and uncond is not None

    def pending(self) -> tuple[int, int]:
        if not self._active:
            return 0, 0
        if self._weak_in_step:
            return 1, 0
        return (0, 1) if self._unmarked_in_step else (0, 0)

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
