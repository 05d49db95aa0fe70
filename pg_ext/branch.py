"""The weak branch inside the host's one batched call: per-layer hooks that give the weak rows θ_ω.

For every layer a personalization touches, rows flagged weak in the current call get the output of
θ_ω = θ' − (1 − ω)·D, where θ' is what the layer holds now and D = θ' − θ. Two ways, both exact:

* additive — y[weak] −= (1 − ω)·contribution(D, x[weak]). For a LoRA, D is low rank and this costs
  two thin matmuls on the weak rows only.
* exact weights — the layer runs on the cond rows only (a forward pre-hook drops the weak rows), and
  the weak rows run with a cached W_ω = W' − (1 − ω)·D. Same FLOPs as the plain batched call; costs
  one copy of the affected weights (the way to go for dense differences such as a DreamBooth fine-tune).

Modules that are not affine in their parameters (the text encoder's MultiheadAttention) are recomputed
whole with θ_ω; that is only used when every row is weak (the weak conditioning, once per batch).

Nothing here changes a parameter: hooks are removed in `detach`, which `with` always runs.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from .deltas import DenseDelta, LayerDelta, weak_rows_op
from .rows import RowLayout, WeakRows

log = logging.getLogger("personalization_guidance")

ALL_ROWS = "all"


class ParamDeltas(dict):
    """Differences by parameter name (e.g. 'in_proj_weight', 'out_proj.weight') of a non-affine module."""


class WeakBranch:
    """Per-layer hooks that make the weak rows of each call see θ_ω; set `rows` (or `mask`) per call."""

    def __init__(self, omega: float, deltas: Mapping[nn.Module, Sequence[LayerDelta] | ParamDeltas],
                 exact_weights: bool = False, keep_on_device: bool = True):
        self.set_omega(omega)
        self.deltas = dict(deltas)
        self.exact_weights = exact_weights
        # lowvram: the host moves each block to the GPU only while it runs; so do we (no device caches)
        self.keep_on_device = keep_on_device
        self.rows: Optional[WeakRows] = None  # the weak rows of the current call; None = none
        self._handles: list = []
        self._stash: dict[int, tuple] = {}
        self._weak_params: dict[int, tuple] = {}
        self._recomputing = False

    def set_omega(self, omega: float) -> None:
        """ω for the calls from now on (a schedule sets it once per step, host-side).

        The additive path reads `keep` in every call, so any ω costs nothing. The exact-weights path
        caches W_ω = W' − (1 − ω)·D per layer; W_ω is affine in (1 − ω) with W' and D fixed, so a new ω
        is exactly `_minus(W', D, 1 − ω)` again: it is formed once, at the first call of a step whose ω
        differs from the cached one (never for a constant ω, nor for plain-CFG steps, which skip the
        hooks), an elementwise pass over the affected weights with no matmul added.
        """
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {omega!r}")
        self.omega = float(omega)
        self.keep = 1.0 - self.omega  # share of D removed from the weak rows

    @property
    def mask(self) -> Optional[WeakRows]:
        return self.rows

    @mask.setter
    def mask(self, mask: Optional[torch.Tensor] | str) -> None:
        """[n] bool (read to the host here, once), ALL_ROWS, or None."""
        if mask is None:
            self.rows = None
        elif isinstance(mask, str):
            if mask != ALL_ROWS:
                raise ValueError(f"mask must be a bool tensor, None or {ALL_ROWS!r}, got {mask!r}")
            self.rows = WeakRows.every_row()
        else:
            self.rows = WeakRows.from_mask(mask)

    # -- lifecycle --------------------------------------------------------------------------------

    def attach(self) -> "WeakBranch":
        """Register the hooks (idempotent)."""
        if self._handles or self.keep == 0.0:  # built at ω = 1: it never acts (a schedule builds at its lowest ω)
            return self
        for layer, deltas in self.deltas.items():
            if isinstance(deltas, ParamDeltas):
                self._handles.append(layer.register_forward_hook(self._recompute_hook, with_kwargs=True))
            elif self.exact_weights and any(isinstance(d, DenseDelta) and d.weight is not None for d in deltas):
                # a bias-only difference stays additive: one add on the weak rows beats splitting the layer
                self._handles.append(layer.register_forward_pre_hook(self._split_pre_hook))
                self._handles.append(layer.register_forward_hook(self._split_hook))
            else:
                self._handles.append(layer.register_forward_hook(self._additive_hook))
        return self

    def detach(self) -> None:
        """Remove every hook and drop cached weights and device copies; the layers are exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stash.clear()
        self._weak_params.clear()
        for deltas in self.deltas.values():
            if not isinstance(deltas, ParamDeltas):
                for delta in deltas:
                    delta.release()  # the deltas may live on in a cache between jobs; their device copies must not
        self.rows = None

    def __enter__(self) -> "WeakBranch":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def cache_bytes(self) -> int:
        """Bytes held by cached θ_ω weights (exact-weights layers seen so far)."""
        return sum(t.numel() * t.element_size() for entry in self._weak_params.values() for t in entry[1]
                   if t is not None)

    # -- rows ------------------------------------------------------------------------------------

    def _layout(self, x: torch.Tensor) -> Optional[RowLayout]:
        rows = self.rows
        if rows is None or self.keep == 0.0:  # a step at ω = 1 is plain CFG: the layer runs untouched
            return None
        return rows.layout(x.shape[0], x.device)

    # -- additive path ---------------------------------------------------------------------------

    def _additive_hook(self, layer: nn.Module, args: tuple, output: torch.Tensor):
        at = self._layout(output)
        if at is None:
            return None
        x = args[0]
        x = x.narrow(0, at.first, at.count) if at.is_block else x.index_select(0, at.weak)
        deltas = self.deltas[layer]
        if at.is_block and not (output.requires_grad and torch.is_grad_enabled()):
            # deltas that subtract their share straight from the weak rows (a fused weight's slices: no
            # full-width temporary); the rest go the common way below
            rows = output.narrow(0, at.first, at.count)
            deltas = [d for d in deltas if not d.subtract_from(layer, x, rows, self.keep, self.keep_on_device)]
            if not deltas:
                return None
        first, *more = deltas
        correction = first.contribution(layer, x, self.keep_on_device)
        for delta in more:  # not sum(): its 0 + tensor would be one more op per layer and call
            correction = correction + delta.contribution(layer, x, self.keep_on_device)
        correction = correction.to(output.dtype)
        rows_shape = (at.count,) + tuple(output.shape[1:])
        if correction.shape != rows_shape:  # a bias-only difference comes as Δb broadcast over the rows
            correction = correction.expand(rows_shape)
        if output.requires_grad and torch.is_grad_enabled():
            index = at.weak if not at.is_block else torch.arange(at.first, at.first + at.count, device=output.device)
            return output.index_add(0, index, correction, alpha=-self.keep)
        if at.is_block:
            output.narrow(0, at.first, at.count).sub_(correction, alpha=self.keep)
        else:
            output.index_add_(0, at.weak, correction, alpha=-self.keep)
        return None

    # -- exact-weights path ----------------------------------------------------------------------

    def _split_pre_hook(self, layer: nn.Module, args: tuple):
        x = args[0]
        at = self._layout(x)
        if at is None:
            self._stash.pop(id(layer), None)
            return None
        if at.is_block:
            # the usual layout: the weak rows are one block (A1111 puts uncond last); views, no gather
            first, count = at.first, at.count
            self._stash[id(layer)] = (x.narrow(0, first, count), at)
            rest = [x.narrow(0, 0, first), x.narrow(0, first + count, x.shape[0] - first - count)]
            rest = [r for r in rest if r.shape[0]]
            kept = rest[0] if len(rest) == 1 else torch.cat(rest) if rest else x.narrow(0, 0, 0)
            return (kept,) + tuple(args[1:])
        self._stash[id(layer)] = (x.index_select(0, at.weak), at)
        return (x.index_select(0, at.kept),) + tuple(args[1:])

    def _split_hook(self, layer: nn.Module, args: tuple, output: torch.Tensor):
        stashed = self._stash.pop(id(layer), None)
        if stashed is None:
            return None
        x_weak, at = stashed
        weight, bias = self._weak_weights(layer, x_weak)
        weak = weak_rows_op(layer, x_weak, weight, bias).to(output.dtype)
        if at.is_block:
            first = at.first
            parts = [output.narrow(0, 0, first), weak, output.narrow(0, first, output.shape[0] - first)]
            return torch.cat([p for p in parts if p.shape[0]])
        full = output.new_empty((at.rows,) + tuple(weak.shape[1:]))
        full.index_copy_(0, at.kept, output)
        full.index_copy_(0, at.weak, weak)
        return full

    def _weak_weights(self, layer: nn.Module, x: torch.Tensor) -> tuple:
        """W_ω = W' − (1 − ω)·D for this layer, computed once per device and dtype from the weights the host merged."""
        dtype = x.dtype if x.is_floating_point() else layer.weight.dtype
        if isinstance(layer, nn.GroupNorm):
            dtype = torch.float32  # computed in float32, like GroupNorm32
        key = (x.device, dtype, self.keep)
        cached = self._weak_params.get(id(layer))
        if cached is not None and cached[0] == key:
            return cached[1]
        dense = [d.dense() for d in self.deltas[layer]]
        params = (_minus(layer.weight, [d.weight for d in dense], self.keep, x.device, dtype),
                  _minus(getattr(layer, "bias", None), [d.bias for d in dense], self.keep, x.device, dtype))
        if self.keep_on_device:
            self._weak_params[id(layer)] = (key, params)
        return params

    # -- non-affine modules (text encoder attention) ----------------------------------------------

    def _recompute_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        rows = self.rows
        if rows is None or self._recomputing or self.keep == 0.0:
            return None
        if rows.n is not None and len(rows.weak) != rows.n:
            log.warning("PG: %s is corrected only when every row is weak; left as is", type(module).__name__)
            return None
        params = dict(module.named_parameters())
        weak = {name: params[name] - self.keep * d.to(params[name]) for name, d in self.deltas[module].items()}
        self._recomputing = True  # functional_call runs the module's hooks again
        try:
            return torch.func.functional_call(module, weak, args, kwargs)
        finally:
            self._recomputing = False


def _minus(param: Optional[torch.Tensor], diffs: list, keep: float, device: torch.device, dtype: torch.dtype
           ) -> Optional[torch.Tensor]:
    """param − keep·Σ diffs, computed in float32, returned on `device` in `dtype` (None if nothing is there).

    Built for every affected layer at the start of each pass (a DreamBooth UNet: GiBs), so the common
    case, one float32 difference of a float32 weight on its device, is one fused pass with one new tensor.
    """
    diffs = [d for d in diffs if d is not None]
    if not diffs:
        return None if param is None else param.detach().to(device=device, dtype=dtype)
    diff = diffs[0].to(device=device, dtype=torch.float32)
    for more in diffs[1:]:
        diff = diff + more.to(device=device, dtype=torch.float32)
    if param is None:
        return (diff * -keep).to(dtype)
    out = torch.add(param.detach().to(device=device, dtype=torch.float32), diff, alpha=-keep)
    return out.to(dtype)
