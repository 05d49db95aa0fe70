"""Routes the rows of each UNet call: flags the weak rows for the `WeakBranch` before the call, clears after.

A forward pre-hook on the UNet module reads the call's conditioning (`context`, the cross-attention
input of ldm's and sgm's UNetModel, and of the project's miniature model) and asks the step's
`StepRows` which rows are weak. Calls that bypass the module's `__call__` (ControlNet reference-only
passes) see no mask and run as the personalized model.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .branch import WeakBranch
from .rows import StepRows


def context_argument(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The cross-attention conditioning of a UNetModel call: `forward(x, timesteps, context, ...)`."""
    context = kwargs.get("context")
    if context is None and len(args) >= 3:
        context = args[2]
    return context if isinstance(context, torch.Tensor) else None


class UNetRowRouter:
    """Owns the UNet-level hooks of one sampling run; `begin_step` is called once per CFG step."""

    def __init__(self, unet: nn.Module, branch: WeakBranch,
                 context_of: Callable[[tuple, dict], Optional[torch.Tensor]] = context_argument):
        self.unet, self.branch, self.context_of = unet, branch, context_of
        self.step: Optional[StepRows] = None
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
        self.step = None

    def __enter__(self) -> "UNetRowRouter":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def begin_step(self, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor]) -> None:
        """Start a CFG step with its cond [R, T, D] and uncond [B, T', D] rows; None = plain CFG step."""
        self.step = None if cond is None or uncond is None else StepRows(cond, uncond)

    def _before_call(self, module: nn.Module, args: tuple, kwargs: dict):
        context = self.context_of(args, kwargs)
        self.branch.mask = None if self.step is None or context is None else self.step.weak_rows(context)
        return None

    def _after_call(self, module: nn.Module, args: tuple, output):
        self.branch.mask = None
        return None
