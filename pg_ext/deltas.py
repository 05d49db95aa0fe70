"""Weight differences θ' − θ of one layer, and what they contribute to the layer's output.

Linear, Conv2d, Conv3d, GroupNorm, LayerNorm and RMSNorm are affine in their parameters, so a layer
evaluated with W + D equals the layer with W plus `contribution(D, x)` — the same op run with D as its
parameters (and no bias for the normalisation part of a norm). That identity is what lets the weak rows
of a batch be corrected layer by layer: y_weak = y' − (1 − ω)·contribution(D, x).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

# torch.nn.RMSNorm exists from torch 2.4 on (the DiT hosts' floor); the shipped floor is torch 2.1, where no
# layer can be one, so it is looked up, never named.
RMS_NORM: Optional[type] = getattr(nn, "RMSNorm", None)
SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm) + ((RMS_NORM,) if RMS_NORM else ())
_CONVS = (nn.Conv2d, nn.Conv3d)
_LINEAR_LIKE: list[type] = []  # host layer classes that are a Linear in all but their base class


def register_linear(cls: type) -> None:
    """Declare a host's layer class a Linear: 2-D `weight` [out, in], optional `bias`, `F.linear` forward.

    Forge builds its UNet with a Linear that subclasses `nn.Module`, not `nn.Linear`; its adapter
    registers that class here (the adapter knows the host, this module does not).
    """
    if cls not in _LINEAR_LIKE:
        _LINEAR_LIKE.append(cls)


def is_linear(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or isinstance(layer, tuple(_LINEAR_LIKE))


def is_rms_norm(layer: nn.Module) -> bool:
    """torch's RMSNorm or a subclass (Forge Neo's `backend/operations.py:305` RMSNorm, which may add 1 to its weight)."""
    return RMS_NORM is not None and isinstance(layer, RMS_NORM)


def is_supported(layer: nn.Module, every_row_weak: bool = False) -> bool:
    """Whether PG can correct this layer type row by row.

    An Embedding (y = W[ids], linear in W) only where every row is weak, the weak prompt's encode: its ids need
    not carry the call's rows first (T5's relative-position buckets are [L, L]), and `max_norm` rescales W's rows.
    """
    if isinstance(layer, nn.Embedding):
        return every_row_weak and layer.max_norm is None
    return isinstance(layer, SUPPORTED_LAYERS) or is_linear(layer)


def _compute_dtype(layer: nn.Module, x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype a correction is computed in: the input's, or for token ids (an Embedding) the weight's."""
    if x.is_floating_point():
        return None
    weight = getattr(layer, "weight", None)
    return weight.dtype if weight is not None and weight.is_floating_point() else torch.float32


def difference_dtype(storage: torch.dtype) -> torch.dtype:
    """The dtype to keep a parameter difference in: the weight's own when it is a float of 16 bits or more,
    else float32. fp8/int8 storage would round a 1e-3-scale difference away (a third of it or all of it)."""
    if storage.is_floating_point and torch.finfo(storage).bits >= 16:
        return storage
    return torch.float32


def layer_op(layer: nn.Module, x: torch.Tensor, weight: Optional[torch.Tensor],
             bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The layer's own functional op on `x` with the given parameters (any may be None)."""
    if is_linear(layer):
        return F.linear(x, weight, bias)
    if isinstance(layer, _CONVS):
        if layer.padding_mode != "zeros":
            raise NotImplementedError(f"{type(layer).__name__} padding_mode={layer.padding_mode!r} is not supported")
        conv = F.conv3d if isinstance(layer, nn.Conv3d) else F.conv2d
        return conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.GroupNorm):
        # GroupNorm32 in ldm/sgm computes in float32; follow it so the correction matches.
        return F.group_norm(x.float(), layer.num_groups, _float(weight), _float(bias), layer.eps).to(x.dtype)
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    if is_rms_norm(layer):
        # x / rms(x) · w: linear in w, so with w = Δw it is the correction. Neo's `add` layers use 1 + w
        # (operations.py:313,328-330); the 1 is no part of a difference: `weak_rows_op` adds it for whole weights.
        if bias is not None:
            raise TypeError("an RMSNorm has no bias")
        return F.rms_norm(x, layer.normalized_shape, weight, layer.eps)
    if isinstance(layer, nn.Embedding):
        if bias is not None or layer.max_norm is not None:
            raise TypeError("an Embedding has no bias; one with max_norm is not linear in its weight")
        return F.embedding(x, weight, layer.padding_idx)
    raise TypeError(f"unsupported layer type {type(layer).__name__}")


def bias_change(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Δb of `layer` shaped to broadcast over its output on `x`: every supported layer adds its bias per
    output channel (dim 1 of a Conv2d/Conv3d/GroupNorm output, the trailing dims of a Linear/LayerNorm output)."""
    if isinstance(layer, _CONVS + (nn.GroupNorm,)):
        return bias.reshape((-1,) + (1,) * (x.dim() - 2))
    if is_linear(layer) or isinstance(layer, nn.LayerNorm):
        return bias
    raise TypeError(f"unsupported layer type {type(layer).__name__}")


# On CPU a convolution over a few pixels is bound by reading its weight, and for one row PyTorch picks
# a slow path for it (measured on SD1.5's 1280/2560-channel 3x3 convs at 4x4 and 8x8: 1.3-1.5x the time
# of the batched call; unfold + one matrix product: 1.05-1.1x). Below this many output pixels the weak
# rows of the exact-weights path take the matrix product.
SMALL_CONV_PIXELS = 64


def weak_rows_op(layer: nn.Module, x: torch.Tensor, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """`layer_op` for the weak rows of the exact-weights path: same math, the faster kernel for their shape."""
    if isinstance(layer, nn.Conv2d) and x.device.type == "cpu" and _small_conv(layer, x):
        return _conv2d_unfolded(layer, x, weight, bias)
    if is_rms_norm(layer) and getattr(layer, "add", False) and weight is not None:
        weight = weight + 1.0  # a whole weight of Neo's `add` RMSNorm (llama.py's Gemma layers) acts as 1 + w
    return layer_op(layer, x, weight, bias)


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _small_conv(layer: nn.Conv2d, x: torch.Tensor) -> bool:
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str) or x.dim() != 4:
        return False
    kh, kw = layer.kernel_size
    if kh * kw == 1:
        return False  # a 1x1 conv is already a matrix product
    h = _out_size(x.shape[2], kh, layer.stride[0], layer.padding[0], layer.dilation[0])
    w = _out_size(x.shape[3], kw, layer.stride[1], layer.padding[1], layer.dilation[1])
    return 0 < h * w <= SMALL_CONV_PIXELS


def _conv2d_unfolded(layer: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """conv2d as unfold + matrix product (weight [Cout, Cin·kh·kw] @ columns [Cin·kh·kw, pixels] per row)."""
    kh, kw = layer.kernel_size
    h = _out_size(x.shape[2], kh, layer.stride[0], layer.padding[0], layer.dilation[0])
    w = _out_size(x.shape[3], kw, layer.stride[1], layer.padding[1], layer.dilation[1])
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [n, Cin·kh·kw, h·w]
    matrix = weight.reshape(weight.shape[0], -1)
    if x.shape[0] == 1:
        out = torch.mm(matrix, cols[0]) if bias is None else torch.addmm(bias[:, None], matrix, cols[0])
        return out.view(1, weight.shape[0], h, w)
    out = torch.matmul(matrix, cols)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(x.shape[0], weight.shape[0], h, w)


def _float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


@dataclasses.dataclass
class DenseDelta:
    """A full-size parameter difference: `weight` has the layer weight's shape, `bias` the bias's."""

    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor] = None
    _placed: _Placed = dataclasses.field(default_factory=lambda: _Placed(), repr=False, compare=False)

    def contribution(self, layer: nn.Module, x: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """Output change of `layer` on `x` when this difference is added to its parameters.

        With only the bias changed the change is Δb on the layer's channel dimension, returned unexpanded
        (broadcastable to the output, not of its shape): one add on the weak rows instead of the layer's op.
        """
        weight, bias = self._placed.get((self.weight, self.bias), x, keep, dtype=_compute_dtype(layer, x))
        if weight is None:
            return bias_change(layer, x, bias)
        return layer_op(layer, x, weight, bias)

    def dense(self) -> "DenseDelta":
        return self

    def subtract_from(self, layer: nn.Module, x: torch.Tensor, rows: torch.Tensor, keep: float,
                      keep_on_device: bool = True) -> bool:
        """Subtract keep · contribution from `rows` in place if this form does it better; False: it does not."""
        return False

    def release(self) -> None:
        """Drop the device copy made for a run (the delta itself may stay cached between jobs)."""
        self._placed.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)


@dataclasses.dataclass
class LowRankDelta:
    """D = scale · up @ down for a Linear, Conv2d, Conv3d or Embedding (LoRA/LoCon layout), plus an optional bias delta.

    Linear: down [r, in], up [out, r]. Conv: down [r, in, *kernel] (runs with the layer's stride,
    padding and dilation), up [out, r, 1, 1(, 1)]. Embedding: up [num, r], down [r, dim] (no bias).
    """

    down: torch.Tensor
    up: torch.Tensor
    scale: float = 1.0
    bias: Optional[torch.Tensor] = None
    _placed: _Placed = dataclasses.field(default_factory=lambda: _Placed(), repr=False, compare=False)

    def contribution(self, layer: nn.Module, x: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """scale · up(down(x)) (+ bias): the cheap form, r channels in the middle instead of a full matmul."""
        # `up` is placed with the scale folded in: one op less per layer and call than scaling the output
        down, up, bias = self._placed.get((self.down, self.up, self.bias), x, keep, scales=(1.0, self.scale, 1.0),
                                          dtype=_compute_dtype(layer, x))
        if is_linear(layer):
            out = F.linear(F.linear(x, down), up)
        elif isinstance(layer, nn.Embedding):  # D = up [num, r] @ down [r, dim]: rows of up, then one product
            return F.embedding(x, up, layer.padding_idx) @ down
        elif isinstance(layer, _CONVS):
            if layer.groups != 1:
                raise NotImplementedError("low-rank deltas on grouped convolutions are not supported")
            conv = F.conv3d if isinstance(layer, nn.Conv3d) else F.conv2d
            out = conv(conv(x, down, None, layer.stride, layer.padding, layer.dilation), up)
        else:
            raise TypeError(f"a low-rank delta needs a Linear or a convolution, got {type(layer).__name__}")
        if bias is not None:
            shape = (-1,) + (1,) * (out.dim() - 2) if isinstance(layer, _CONVS) else (-1,)
            out = out + bias.reshape(shape)
        return out

    def release(self) -> None:
        """Drop the device copy made for a run (the delta itself may stay cached between jobs)."""
        self._placed.clear()

    def subtract_from(self, layer: nn.Module, x: torch.Tensor, rows: torch.Tensor, keep: float,
                      keep_on_device: bool = True) -> bool:
        return False

    def dense(self) -> DenseDelta:
        """The same difference as a full matrix (for merging or the exact-weights path)."""
        up, down = self.up.float(), self.down.float()
        weight = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * self.scale
        return DenseDelta(weight.to(self.up.dtype), self.bias)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.bias) if t is not None)


@dataclasses.dataclass
class SlicedLowRankDelta:
    """D of a Linear that is low rank on ranges of its output rows and zero elsewhere: a fused weight (q, k, v,
    MLP in one matrix) patched slice by slice, as ComfyUI-style offset entries `(0, start, length)` do.

    Part i: rows [starts[i], starts[i] + ups[i].shape[0]) of D are scales[i] · ups[i] @ downs[i]; parts may
    overlap (two LoRAs on q) and need not cover every row. The correction is one product with all `downs`
    stacked ([Σr, in]), then each part's thin `up` into its output columns. Plus an optional full bias delta.
    """

    starts: tuple
    downs: tuple
    ups: tuple
    scales: tuple
    out_features: int
    bias: Optional[torch.Tensor] = None
    _placed: _Placed = dataclasses.field(default_factory=lambda: _Placed(), repr=False, compare=False)

    def __post_init__(self) -> None:
        ends = [s + u.shape[0] for s, u in zip(self.starts, self.ups)]
        if any(s < 0 for s in self.starts) or any(e > self.out_features for e in ends):
            raise ValueError(f"slices {list(zip(self.starts, ends))} do not fit {self.out_features} output rows")
        self._ranks = tuple(int(d.shape[0]) for d in self.downs)
        order = sorted(range(len(self.starts)), key=lambda i: self.starts[i])
        tiled = [self.starts[order[0]] == 0] + [self.starts[b] == ends[a] for a, b in zip(order, order[1:])]
        # the parts tile the rows exactly (q | k | v, or q | k | v | mlp of Flux's linear1): one concatenation
        self._tiling = tuple(order) if all(tiled) and ends[order[-1]] == self.out_features else None
        self._stacked = torch.cat([d.reshape(d.shape[0], -1) for d in self.downs]) if len(self.downs) > 1 \
            else self.downs[0]

    def contribution(self, layer: nn.Module, x: torch.Tensor, keep: bool = True) -> torch.Tensor:
        if not is_linear(layer):
            raise TypeError(f"a sliced low-rank delta needs a Linear, got {type(layer).__name__}")
        placed = self._placed.get((self._stacked, self.bias) + tuple(self.ups), x, keep,
                                  scales=(1.0, 1.0) + tuple(self.scales))
        stacked, bias, ups = placed[0], placed[1], placed[2:]
        h = F.linear(x, stacked)  # [..., Σr]: every part's down in one product
        parts = h.split(self._ranks, dim=-1)
        if self._tiling is not None:
            out = torch.cat([F.linear(parts[i], ups[i]) for i in self._tiling], dim=-1)
        else:
            out = x.new_zeros(tuple(x.shape[:-1]) + (self.out_features,))
            for start, part, up in zip(self.starts, parts, ups):
                out.narrow(-1, start, up.shape[0]).add_(F.linear(part, up))
        return out if bias is None else out + bias

    def subtract_from(self, layer: nn.Module, x: torch.Tensor, rows: torch.Tensor, keep: float,
                      keep_on_device: bool = True) -> bool:
        """rows[..., slice] −= keep · scale · up(down(x)) for each part, in place: one matrix product per part
        written straight into its columns of the layer's output (`rows`: the weak rows, [n, ..., out]), so no
        full-width temporary is made. False (nothing done) where that cannot be done in place."""
        if (not is_linear(layer) or rows.dtype != x.dtype or not rows.is_contiguous()
                or rows.shape[-1] != self.out_features or rows.numel() == 0):
            return False
        placed = self._placed.get((self._stacked, self.bias) + tuple(self.ups), x, keep_on_device,
                                  scales=(1.0, 1.0) + tuple(self.scales))
        stacked, bias, ups = placed[0], placed[1], placed[2:]
        h = F.linear(x, stacked).reshape(-1, sum(self._ranks))
        target = rows.view(-1, self.out_features)
        first = 0
        for start, rank, up in zip(self.starts, self._ranks, ups):
            target.narrow(1, start, up.shape[0]).addmm_(h.narrow(1, first, rank), up.t(), alpha=-keep)
            first += rank
        if bias is not None:
            rows.sub_(bias, alpha=keep)
        return True

    def release(self) -> None:
        self._placed.clear()

    def dense(self) -> DenseDelta:
        """The same difference as a full [out, in] matrix."""
        weight = torch.zeros(self.out_features, self.downs[0].shape[1], dtype=torch.float32)
        for start, down, up, scale in zip(self.starts, self.downs, self.ups, self.scales):
            weight[start:start + up.shape[0]] += (up.float() @ down.float()) * scale
        return DenseDelta(weight.to(self.ups[0].dtype), self.bias)

    def nbytes(self) -> int:
        tensors = list(self.downs) + list(self.ups) + [self.bias]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


LayerDelta = Union[DenseDelta, LowRankDelta, SlicedLowRankDelta]


def _like(t: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.device != device or t.dtype != dtype:
        return t.to(device=device, dtype=dtype, non_blocking=True)
    return t


class _Placed:
    """Copies of a delta's tensors on the compute device/dtype, made once per run instead of per call."""

    def __init__(self) -> None:
        self.key: tuple = ()
        self.tensors: tuple = ()

    def get(self, tensors: tuple, x: torch.Tensor, keep: bool = True, scales: Optional[tuple] = None,
            dtype: Optional[torch.dtype] = None) -> tuple:
        """`tensors` on x's device and dtype (or `dtype`), each times its entry of `scales` (the originals are never
        changed); `keep=False` (lowvram) makes a transient copy per call."""
        key = (x.device, dtype or x.dtype)
        if keep and key == self.key:
            return self.tensors
        placed = tuple(_like(t, x.device, key[1]) for t in tensors)
        if scales is not None:
            placed = tuple(t if t is None or s == 1.0 else t * s for t, s in zip(placed, scales))
        if keep:
            self.key, self.tensors = key, placed
        return placed

    def clear(self) -> None:
        self.key, self.tensors = (), ()


def low_rank_approximation(delta: DenseDelta, energy: float = 0.95, max_rank: Optional[int] = None
                           ) -> tuple[LayerDelta, float]:
    """Truncated SVD of a Linear/Conv2d/Conv3d weight difference keeping `energy` of its squared norm.

    Returns (delta, relative Frobenius error). Deltas of 1-D parameters (norms, biases) stay dense:
    they are small. A rank that would not save memory keeps the dense form (error 0).
    """
    w = delta.weight
    if w is None or w.dim() < 2:
        return delta, 0.0
    matrix = w.float().flatten(1)
    total = float(matrix.pow(2).sum())
    if total == 0.0:
        return DenseDelta(None, delta.bias), 0.0
    u, s, vh = _top_singular(matrix, max_rank)
    kept = torch.cumsum(s ** 2, 0) / total
    rank = int(torch.searchsorted(kept, torch.tensor(energy)).item()) + 1
    rank = min(rank, len(s), max_rank or len(s))
    if rank * (matrix.shape[0] + matrix.shape[1]) >= matrix.numel():
        return delta, 0.0
    # the error is measured, not estimated from the singular values (randomized SVD sees only the top ones)
    error = float((matrix - (u[:, :rank] * s[:rank]) @ vh[:rank]).norm() ** 2 / total) ** 0.5
    up = (u[:, :rank] * s[:rank]).to(w.dtype)
    down = vh[:rank].to(w.dtype)
    if w.dim() > 2:  # a convolution: 1x1(x1) up, the kernel on down
        up = up.reshape(w.shape[0], rank, *(1,) * (w.dim() - 2))
        down = down.reshape(rank, *w.shape[1:])
    return LowRankDelta(down=down, up=up, scale=1.0, bias=delta.bias), error


def _top_singular(matrix: torch.Tensor, max_rank: Optional[int]) -> tuple:
    """(U, S, Vh) of the leading singular triplets: a randomized SVD when only a few are wanted.

    A full SVD of a 1280×11520 SD conv weight takes ~12 s on one CPU thread; the randomized one with
    the budget's rank ~0.5 s, with the same leading triplets to float precision for these sizes.
    """
    smallest = min(matrix.shape)
    if max_rank is not None and max_rank + 16 < smallest // 2:
        u, s, v = torch.svd_lowrank(matrix, q=max_rank + 16, niter=4)
        return u, s, v.T
    return torch.linalg.svd(matrix, full_matrices=False)
