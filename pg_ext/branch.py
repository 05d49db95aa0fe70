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

from .deltas import DenseDelta, LayerDelta, LowRankDelta, layer_op, sum_dense
from .rows import row_index

log = logging.getLogger("personalization_guidance")

ALL_ROWS = "all"


class ParamDeltas(dict):
    """Differences by parameter name (e.g. 'in_proj_weight', 'out_proj.weight') of a non-affine module."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values())


class WeakBranch:
    """Per-layer hooks that make the weak rows of each call see θ_ω; set `mask` per call."""

    def __init__(self, omega: float, deltas: Mapping[nn.Module, Sequence[LayerDelta] | ParamDeltas],
                 exact_weights: bool = False, keep_on_device: bool = True):
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {omega!r}")
        self.omega = float(omega)
        self.keep = 1.0 - self.omega  # share of D removed from the weak rows
        self.deltas = dict(deltas)
        self.exact_weights = exact_weights
        # lowvram: the host moves each block to the GPU only while it runs; so do we (no device caches)
        self.keep_on_device = keep_on_device
        self.mask: Optional[torch.Tensor] | str = None  # [n] bool for the current call, ALL_ROWS, or None
        self._handles: list = []
        self._stash: dict[int, tuple] = {}
        self._weak_params: dict[int, tuple] = {}
        self._recomputing = False

    # -- lifecycle --------------------------------------------------------------------------------

    def attach(self) -> "WeakBranch":
        """Register the hooks (idempotent)."""
        if self._handles or self.keep == 0.0:
            return self
        for layer, deltas in self.deltas.items():
            if isinstance(deltas, ParamDeltas):
                self._handles.append(layer.register_forward_hook(self._recompute_hook, with_kwargs=True))
            elif self.exact_weights and any(isinstance(d, DenseDelta) for d in deltas):
                self._handles.append(layer.register_forward_pre_hook(self._split_pre_hook))
                self._handles.append(layer.register_forward_hook(self._split_hook))
            else:
                self._handles.append(layer.register_forward_hook(self._additive_hook))
        return self

    def detach(self) -> None:
        """Remove every hook and drop cached weights; the layers are exactly as before `attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stash.clear()
        self._weak_params.clear()
        self.mask = None

    def __enter__(self) -> "WeakBranch":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def cache_bytes(self) -> int:
        """Bytes held by cached θ_ω weights (exact-weights layers seen so far)."""
        return sum(t.numel() * t.element_size() for pair in self._weak_params.values() for t in pair if t is not None)

    # -- rows ------------------------------------------------------------------------------------

    def _index(self, rows: int) -> Optional[torch.Tensor]:
        if self.mask is None:
            return None
        if isinstance(self.mask, str):
            return torch.arange(rows)
        return row_index(self.mask, rows)

    # -- additive path ---------------------------------------------------------------------------

    def _additive_hook(self, layer: nn.Module, args: tuple, output: torch.Tensor):
        index = self._index(output.shape[0])
        if index is None:
            return None
        index = index.to(output.device)
        x = args[0].index_select(0, index)
        correction = sum(d.contribution(layer, x, self.keep_on_device) for d in self.deltas[layer])
        correction = correction.to(output.dtype)
        if output.requires_grad and torch.is_grad_enabled():
            return output.index_add(0, index, correction, alpha=-self.keep)
        output.index_add_(0, index, correction, alpha=-self.keep)
        return None

    # -- exact-weights path ----------------------------------------------------------------------

    def _split_pre_hook(self, layer: nn.Module, args: tuple):
        x = args[0]
        index = self._index(x.shape[0])
        if index is None:
            self._stash.pop(id(layer), None)
            return None
        index = index.to(x.device)
        first, count = int(index[0]), index.numel()
        if int(index[-1]) - first + 1 == count:
            # the usual layout: the weak rows are one block (A1111 puts uncond last); views, no gather
            self._stash[id(layer)] = (x.narrow(0, first, count), (first, count))
            rest = [x.narrow(0, 0, first), x.narrow(0, first + count, x.shape[0] - first - count)]
            rest = [r for r in rest if r.shape[0]]
            kept = rest[0] if len(rest) == 1 else torch.cat(rest) if rest else x.narrow(0, 0, 0)
            return (kept,) + tuple(args[1:])
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[index] = False
        self._stash[id(layer)] = (x.index_select(0, index), (index, keep))
        return (x[keep],) + tuple(args[1:])

    def _split_hook(self, layer: nn.Module, args: tuple, output: torch.Tensor):
        stashed = self._stash.pop(id(layer), None)
        if stashed is None:
            return None
        x_weak, where = stashed
        weight, bias = self._weak_weights(layer, x_weak)
        weak = layer_op(layer, x_weak, weight, bias).to(output.dtype)
        if isinstance(where[0], int):
            first, _ = where
            return torch.cat([output.narrow(0, 0, first), weak, output.narrow(0, first, output.shape[0] - first)])
        index, keep = where
        full = output.new_empty((keep.shape[0],) + tuple(weak.shape[1:]))
        full[keep] = output
        full[index] = weak
        return full

    def _weak_weights(self, layer: nn.Module, x: torch.Tensor) -> tuple:
        """W_ω = W' − (1 − ω)·D for this layer, computed once from the weights the host merged."""
        cached = self._weak_params.get(id(layer))
        if cached is not None and cached[0].device == x.device:
            return cached
        delta = sum_dense(list(self.deltas[layer]))
        weight = layer.weight.detach().to(device=x.device, dtype=torch.float32)
        if delta.weight is not None:
            weight = weight - self.keep * delta.weight.to(device=x.device, dtype=torch.float32)
        bias = None if layer.bias is None else layer.bias.detach().to(device=x.device, dtype=torch.float32)
        if delta.bias is not None:
            d_bias = self.keep * delta.bias.to(device=x.device, dtype=torch.float32)
            bias = -d_bias if bias is None else bias - d_bias
        dtype = x.dtype if x.is_floating_point() else layer.weight.dtype
        if isinstance(layer, nn.GroupNorm):
            dtype = torch.float32  # computed in float32, like GroupNorm32
        cached = (weight.to(dtype), None if bias is None else bias.to(dtype))
        if self.keep_on_device:
            self._weak_params[id(layer)] = cached
        return cached

    # -- non-affine modules (text encoder attention) ----------------------------------------------

    def _recompute_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if self.mask is None or self._recomputing:
            return None
        if self.mask is not ALL_ROWS and not (isinstance(self.mask, torch.Tensor) and bool(self.mask.all())):
            log.warning("PG: %s is corrected only when every row is weak; left as is", type(module).__name__)
            return None
        params = dict(module.named_parameters())
        weak = {name: params[name] - self.keep * d.to(params[name]) for name, d in self.deltas[module].items()}
        self._recomputing = True  # functional_call runs the module's hooks again
        try:
            return torch.func.functional_call(module, weak, args, kwargs)
        finally:
            self._recomputing = False


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float, bias: Optional[torch.Tensor] = None
               ) -> LowRankDelta:
    """A LoRA/LoCon layer difference: scale·up@down (scale = strength · alpha / rank)."""
    return LowRankDelta(down=down, up=up, scale=scale, bias=bias)
