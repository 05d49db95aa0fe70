"""Per-layer differences of the personalization LoRAs, from weight patches in ComfyUI's layout.

ComfyUI's model patcher (and its ports: reForge's `ldm_patched`) keeps LoRAs as data: for every patched
parameter key a list of entries `(strength_patch, patch, strength_model, offset, function)`, merged in
order into the original weight by the host's merge function when the model loads. θ_ω is those
entries with the selected LoRAs' `strength_patch` × ω, merged by the same function; the difference a
weak row must lose is θ' − θ_ω = (1 − ω)·D. Two forms of D, both exact:

* low rank — every entry on the parameter is a plain LoRA (additive: no DoRA, mid, reshape or model
  strength): D = Σ_selected strength · (alpha / rank) · up @ down, evaluated as two thin products on the
  weak rows (`LowRankDelta`). An entry with an offset `(0, start, length)` (a diffusers q/k/v LoRA on a
  fused qkv weight) is that product on rows [start, start + length) only (`SlicedLowRankDelta`); one whose
  function the adapter declares a fixed row permutation (Neo's `swap_scale_shift`) has its `up` rows
  permuted, the permutation read from the host's own merge;
* dense — anything else (LoHa, LoKr, DoRA, diff, a non-affine mix): D = (θ' − θ_ω) / (1 − ω) from two
  merges with the host's own function, so every type the host knows is handled as the host does.

Nothing here imports a host: the entries are read by their documented layout, and the merge function,
the layer of a key and its original weight are handed in by the adapter.
"""
from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import torch
from torch import nn

from pg_ext.deltas import (DenseDelta, LayerDelta, LowRankDelta, SlicedLowRankDelta, difference_dtype, is_linear,
                           is_supported)

Entry = tuple  # (strength_patch, patch, strength_model, offset, function[, online_mode])
Merge = Callable[[list, torch.Tensor, str], torch.Tensor]  # host merge: (entries, float32 weight copy, key) -> weight


def scaled(entry: Entry, factor: float) -> Entry:
    """The same entry at `factor` × its strength (θ_ω for a selected LoRA is its entries at ω × strength)."""
    return (entry[0] * factor,) + tuple(entry[1:])


def plain_lora(entry: Entry) -> Optional[tuple[torch.Tensor, torch.Tensor, float]]:
    """(up, down, strength · alpha / rank) of a LoRA entry on a whole weight; None for anything else (an offset
    or function entry included: `_low_rank` reads those). The patch layouts are in `_lora_weights`."""
    part = _lora_part(entry)
    if part is None or part[3] is not None or part[4] is not None:
        return None
    return part[:3]


def _lora_weights(patch: Any) -> Optional[tuple]:
    """(up, down, alpha, mid, dora_scale, reshape) of a LoRA patch in either layout, else None.

    An adapter object (`name == "lora"`, `weights` of 6: ComfyUI's weight_adapter, reForge) or the
    tuple `("lora", (up, down, alpha, mid, dora_scale))` (Forge's loader).
    """
    weights = getattr(patch, "weights", None)
    if getattr(patch, "name", None) == "lora" and isinstance(weights, (tuple, list)) and len(weights) == 6:
        return tuple(weights)
    if isinstance(patch, (tuple, list)) and len(patch) == 2 and patch[0] == "lora" \
            and isinstance(patch[1], (tuple, list)) and len(patch[1]) == 5:
        return tuple(patch[1]) + (None,)
    return None


def _fits(layer: nn.Module, up: torch.Tensor, down: torch.Tensor) -> bool:
    """Whether up(down(x)) on this layer is exactly the merged difference reshaped to its weight."""
    if is_linear(layer):
        return up.dim() == 2 and down.dim() == 2 and up.shape[0] == layer.out_features \
            and down.shape[1] == layer.in_features
    if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
        spatial = len(layer.kernel_size)
        return (layer.groups == 1 and up.dim() == 2 + spatial and down.dim() == 2 + spatial
                and tuple(up.shape[2:]) == (1,) * spatial
                and up.shape[0] == layer.out_channels and down.shape[1] == layer.in_channels
                and tuple(down.shape[2:]) == tuple(layer.kernel_size))
    if isinstance(layer, nn.Embedding):
        return up.dim() == 2 and down.dim() == 2 and up.shape[0] == layer.num_embeddings \
            and down.shape[1] == layer.embedding_dim
    return False


def _lora_part(entry: Entry) -> Optional[tuple]:
    """(up, down, strength · alpha / rank, offset, function) of a LoRA entry that adds up @ down to its target
    (no DoRA, mid, reshape or model strength), else None."""
    strength, patch, strength_model, offset, function = entry[:5]
    if strength_model != 1.0:
        return None
    weights = _lora_weights(patch)
    if weights is None:
        return None
    up, down, alpha, mid, dora_scale, reshape = weights
    if mid is not None or dora_scale is not None or reshape is not None:
        return None
    ratio = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return up, down, float(strength) * ratio, offset, function


def _slice_of(key: str, layer: nn.Module, up: torch.Tensor, offset) -> Optional[tuple[int, int]]:
    """(start, length) of the output rows an entry's product lands in; None when it is not rows of a Linear.

    Raises NotImplementedError when the slice reaches past the weight (Lumina 2's diffusers k/v offsets on
    its GQA qkv, docs/dit-families.md §1.6): the host's own merge cannot be right there either."""
    rows = layer.out_features
    if offset is None:
        return (0, rows)
    dim, start, length = (int(v) for v in offset)
    if dim != 0:
        return None
    if start < 0 or length != up.shape[0] or start + length > rows:
        raise NotImplementedError(f"{key}: a LoRA entry patches rows [{start}, {start + length}) with a "
                                  f"{up.shape[0]}-row product, which does not fit the {rows}-row "
                                  f"{type(layer).__name__}")
    return (start, length)


def _probe_patch(patch: Any, up: torch.Tensor, down: torch.Tensor) -> Any:
    """A copy of a LoRA patch, in its own layout and class, holding other factors (alpha none: scale 1)."""
    if isinstance(patch, (tuple, list)):
        return ("lora", (up, down, None, None, None))
    probe = copy.copy(patch)
    probe.weights = (up, down, None, None, None, None)
    return probe


def _row_permutation(key: str, entry: Entry, layer: nn.Module, span: tuple[int, int], merge: Merge
                     ) -> Optional[torch.Tensor]:
    """perm such that the host's merge of this entry puts row perm[i] of up @ down in row `start + i`; None
    when the merge does not move whole rows.

    Read from the host's own merge of a probe (up = row numbers, down = ones), so the permutation is the one
    the host applies, however it applies its function (Neo's LoRA adapter calls it per chunk of 1024 rows,
    comfy/weight_adapter/lora.py:200-209 at de2193d, so a `swap_scale_shift` there swaps halves per chunk)."""
    start, length = span
    in_features = layer.in_features

    def probe(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, bool]:
        entry_probe = (1.0, _probe_patch(entry[1], up, down), 1.0) + tuple(entry[3:])
        merged = merge([entry_probe], torch.zeros(layer.out_features, in_features, dtype=torch.float32), key).float()
        return merged.narrow(0, start, length), not bool(torch.cat([merged[:start], merged[start + length:]]).any())

    # rows numbered 1..length (exact in float32 up to 2^24), every column alike: where does each row go?
    rows, kept_out = probe(torch.arange(1, length + 1, dtype=torch.float32)[:, None], torch.ones(1, in_features))
    values = rows[:, 0]
    perm = values.round().long() - 1
    if not kept_out or not bool((rows == values[:, None]).all()) or not bool((values == perm + 1).all()) \
            or not torch.equal(perm.sort().values, torch.arange(length)):
        return None
    # columns numbered 1..in, every row alike: the columns must stay where they are
    columns, kept_out = probe(torch.ones(length, 1), torch.arange(1, in_features + 1, dtype=torch.float32)[None])
    if not kept_out or not torch.equal(columns, torch.arange(1, in_features + 1, dtype=torch.float32).expand(length, -1)):
        return None
    return perm


def _low_rank(key: str, layer: nn.Module, entries: Sequence[Entry], selected: Collection[int], merge: Merge,
              row_permutations: Collection[Callable]) -> Optional[list[LayerDelta]]:
    """The selected entries' D as thin products when every entry on the key adds a low-rank product (whole
    weight, a slice of its rows, rows permuted by a known function); None for the dense path."""
    parts = []
    for entry in entries:
        part = _lora_part(entry)
        if part is None:
            return None
        up, down, scale, offset, function = part
        if offset is None and function is None:
            if not _fits(layer, up, down):
                return None
            parts.append((entry, None, up, down, scale))
            continue
        if not is_linear(layer) or up.dim() != 2 or down.dim() != 2 or down.shape[1] != layer.in_features:
            return None
        span = _slice_of(key, layer, up, offset)
        if span is None:
            return None
        if function is not None:
            if not any(function is f for f in row_permutations):
                return None  # any other function: the host's merge, densely
            if id(entry) in selected:
                perm = _row_permutation(key, entry, layer, span, merge)
                if perm is None:
                    return None
                up = up[perm]
        parts.append((entry, span, up, down, scale))
    chosen = [(span, up.detach(), down.detach(), scale) for entry, span, up, down, scale in parts
              if id(entry) in selected]
    if all(span is None or span == (0, layer.out_features) for span, *_ in chosen):
        return [LowRankDelta(down=down, up=up, scale=scale) for _, up, down, scale in chosen]
    return [SlicedLowRankDelta(starts=tuple(span[0] if span else 0 for span, *_ in chosen),
                               downs=tuple(d for _, _, d, _ in chosen), ups=tuple(u for _, u, _, _ in chosen),
                               scales=tuple(s for *_, s in chosen), out_features=layer.out_features)]


def dense_difference(key: str, entries: Sequence[Entry], selected: Collection[int], omega: float,
                     base: torch.Tensor, merge: Merge) -> torch.Tensor:
    """D = (θ' − θ_ω) / (1 − ω) for one parameter, both merged by the host's function from `base` (float32)."""
    full = merge(list(entries), base.detach().float().clone(), key)
    weak = merge([scaled(e, omega) if id(e) in selected else e for e in entries], base.detach().float().clone(), key)
    return (full.float() - weak.float()) / (1.0 - omega)


class DenseDifferences:
    """Dense differences D by parameter key, kept between passes and jobs: merging θ' and θ_ω with the host's
    function is the costly part of a pass (two full merges per key), and a hires pass or the next job with
    the same LoRAs and ω needs the same D.

    A record is reused only for the very same entries (identity: the host builds new ones when the prompt's
    LoRAs change, and its patcher clones share them), the same selection, ω and layer. Not compared: the base
    tensor (the host may copy its backup anew for every pass; the values of a layer's base change only when
    a checkpoint loads, and the script clears this cache then) and the merge function (the one host's of
    this process; the adapters wrap it in a new closure per pass). The records hold their entries, so no id is reused while cached. One
    pass's preparation is a round (`end_round`): records that round did not use are dropped, so what stays
    between jobs is what the last pass used; the script clears everything when a model loads.
    """

    def __init__(self) -> None:
        self._records: dict[str, tuple] = {}
        self._used: set[str] = set()

    def get(self, key: str, entries: Sequence[Entry], selected: Collection[int], omega: float,
            layer: nn.Module, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        entries = tuple(entries)
        flags = tuple(id(e) in selected for e in entries)
        record = self._records.get(key)
        self._used.add(key)
        if record is not None:
            kept_entries, kept_flags, kept_omega, layer_ref, difference = record
            if (len(kept_entries) == len(entries) and all(a is b for a, b in zip(kept_entries, entries))
                    and kept_flags == flags and kept_omega == omega and layer_ref() is layer):
                return difference
        difference = build()
        self._records[key] = (entries, flags, omega, weakref.ref(layer), difference)
        return difference

    def end_round(self) -> None:
        """End of one pass's preparation: forget what it did not use (a LoRA no longer in the prompt)."""
        for key in set(self._records) - self._used:
            del self._records[key]
        self._used.clear()

    def clear(self) -> None:
        self._records.clear()
        self._used.clear()

    def __len__(self) -> int:
        return len(self._records)


DENSE_DIFFERENCES = DenseDifferences()  # one per process, like the host's own merged weights


def patch_deltas(patches: Mapping[str, Sequence[Entry]], selected: Collection[int], omega: float,
                 layer_of: Callable[[str], Optional[tuple[nn.Module, str]]],
                 base_of: Callable[[str], torch.Tensor], merge: Merge,
                 cache: DenseDifferences = DENSE_DIFFERENCES, row_permutations: Collection[Callable] = (),
                 every_row_weak: bool = False,
                 rounded_on_merge: Optional[Callable[[str, Sequence[Entry]], bool]] = None
                 ) -> dict[nn.Module, list[LayerDelta]]:
    """Layer -> differences of the selected entries (ids in `selected`) for every patched Linear/conv/norm.

    `layer_of(key)` gives (module, parameter name) or None; `base_of(key)` the parameter without any
    patch. A parameter without a selected entry costs nothing; one PG cannot correct raises
    NotImplementedError (the adapter runs the pass as plain CFG and says why). Dense differences come
    from `cache` when it holds them for the same entries and ω. `row_permutations`: the host's entry
    functions that only reorder whole rows (the low-rank path permutes `up`; other functions go dense).
    `every_row_weak`: the deltas serve a call whose rows are all weak (the weak prompt's encode), where an
    Embedding can be corrected too (`is_supported`).
    `rounded_on_merge(key, entries)`: whether the host writes this key's merged weight back in a storage dtype
    so coarse (fp8: 3 mantissa bits) that θ' and θ_ω, each rounded, no longer differ by (1 − ω)·up @ down;
    such a key goes dense, and `merge` must round as the host does, so that D is the host's own difference.
    """
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0, 1], got {omega!r}")
    if omega == 1.0:
        return {}  # θ_ω = θ': the weak branch is the personalized model, nothing to correct
    weights: dict[nn.Module, Any] = {}
    biases: dict[nn.Module, torch.Tensor] = {}
    for key, entries in patches.items():
        if not any(id(e) in selected for e in entries):
            continue
        layer, name = _placed(key, layer_of(key), every_row_weak)
        rounded = rounded_on_merge is not None and rounded_on_merge(key, entries)
        low = _low_rank(key, layer, entries, selected, merge, row_permutations) \
            if name == "weight" and not rounded else None
        if low is not None:
            weights[layer] = low
            continue
        dtype = _difference_dtype_of(layer)
        difference = cache.get(key, entries, selected, omega, layer,
                               lambda: dense_difference(key, entries, selected, omega, base_of(key), merge).to(dtype))
        (weights if name == "weight" else biases)[layer] = difference
    return {layer: _join(layer, weights.get(layer), biases.get(layer)) for layer in {**weights, **biases}}


def _placed(key: str, found: Optional[tuple[nn.Module, str]], every_row_weak: bool = False
            ) -> tuple[nn.Module, str]:
    """The (layer, parameter) a selected entry patches; NotImplementedError naming both when PG cannot
    correct it: skipping it would leave the weak rows a mix of θ' and θ_ω on that layer."""
    if found is None:
        raise NotImplementedError(f"{key} is patched by a selected LoRA but is not a parameter PG can find")
    layer, name = found
    if not is_supported(layer, every_row_weak) or name not in ("weight", "bias"):
        where = " outside the text encoder" if isinstance(layer, nn.Embedding) and name == "weight" else ""
        raise NotImplementedError(f"{key} ({type(layer).__name__}.{name}) is patched by a selected LoRA; "
                                  f"PG cannot correct that layer type{where} yet")
    return layer, name


def _difference_dtype_of(layer: nn.Module) -> torch.dtype:
    """What a layer's differences are kept in (its weight's dtype, widened below 16 bits): one dtype per layer."""
    weight = getattr(layer, "weight", None)
    return difference_dtype(weight.dtype) if weight is not None else torch.float32


def _join(layer: nn.Module, weight: Any, bias: Optional[torch.Tensor]) -> list[LayerDelta]:
    """One layer's deltas: low-rank parts carry the bias difference, a dense weight takes it along."""
    dtype = _difference_dtype_of(layer)
    bias = None if bias is None else bias.to(dtype)
    if isinstance(weight, list):
        if bias is not None:
            weight[0] = dataclasses.replace(weight[0], bias=bias)
        return weight
    # a bias-only patch keeps no weight: its correction is Δb alone (`DenseDelta.contribution`)
    return [DenseDelta(None if weight is None else weight.to(dtype), bias)]
