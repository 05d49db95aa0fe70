"""Weak weights for a DreamBooth checkpoint: the per-layer difference D = θ_finetuned − θ_base.

The base is read tensor by tensor with safetensors (no pickle), checked name by name and shape by shape
against the loaded model, and only the tensors that differ are kept, in the loaded model's storage
dtype. `low_memory=True` keeps a truncated SVD per weight instead (rank by an energy threshold and a
per-layer memory budget), with its relative error reported.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from .config import LOW_MEMORY_BUDGET
from .deltas import DenseDelta, LayerDelta, LowRankDelta, difference_dtype, is_supported, low_rank_approximation

UNET_PREFIX = "model.diffusion_model."


class CheckpointMismatch(ValueError):
    """The base checkpoint does not fit the loaded model; the message says what differs."""


@dataclasses.dataclass
class CheckpointDeltas:
    """Per-layer differences of the loaded UNet from a base checkpoint, with bookkeeping for the UI."""

    deltas: dict[nn.Module, list[LayerDelta]]
    changed_tensors: int
    total_tensors: int
    nbytes: int
    unet_nbytes: int
    relative_error: float = 0.0  # low-memory mode: ‖D − D_r‖ / ‖D‖ over all weights

    @property
    def memory_fraction(self) -> float:
        return self.nbytes / max(self.unet_nbytes, 1)


def read_unet_tensors(path: str, prefix: str = UNET_PREFIX) -> Iterator[tuple[str, torch.Tensor]]:
    """(name without prefix, tensor) for every UNet tensor of a .safetensors file, one at a time."""
    if not path.lower().endswith(".safetensors"):
        raise CheckpointMismatch(
            f"base checkpoint {os.path.basename(path)!r} is not a .safetensors file; PG reads bases with "
            "safetensors only (no pickle). Convert it, e.g. with the WebUI's Checkpoint Merger (safetensors output).")
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        keys = [k for k in f.keys() if k.startswith(prefix)]
        if not keys:
            raise CheckpointMismatch(f"base checkpoint {os.path.basename(path)!r} has no UNet tensors ('{prefix}*')")
        for key in keys:
            yield key[len(prefix):], f.get_tensor(key)


def _owner(unet: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, param = name.rpartition(".")
    return unet.get_submodule(module_name) if module_name else unet, param


def _describe(shape: torch.Size, name: str) -> str:
    if name == "input_blocks.0.0.weight" and len(shape) == 4:
        return f"{shape[1]} input channels ({'inpainting' if shape[1] == 9 else 'instruct-pix2pix' if shape[1] == 8 else 'txt2img'})"
    if name.endswith("attn2.to_k.weight"):
        return f"text context width {shape[1]} (768 = SD1, 1024 = SD2, 2048 = SDXL)"
    return f"shape {list(shape)}"


def checkpoint_deltas(unet: nn.Module, base: Mapping[str, torch.Tensor] | Iterator[tuple[str, torch.Tensor]],
                      original: Optional[Callable[[nn.Module, str], torch.Tensor]] = None,
                      low_memory: bool = False, energy: float = 0.9, budget: float = LOW_MEMORY_BUDGET) -> CheckpointDeltas:
    """D = loaded − base for every UNet tensor that differs, grouped by layer.

    `original(module, param_name)` gives the loaded checkpoint's own value of a parameter when the host
    has merged something into it (A1111 keeps LoRA-free weights in `network_weights_backup`).
    In low-memory mode each weight difference is factorized as soon as it is read, so the full D never
    exists at once.
    """
    items = base.items() if isinstance(base, Mapping) else base
    loaded = dict(unet.named_parameters())
    seen: set[str] = set()
    parts: dict[nn.Module, dict[str, object]] = {}
    changed, err_num, err_den = 0, 0.0, 0.0
    for name, tensor in items:
        found = _difference(unet, loaded, name, tensor, original)
        if found is None:
            continue
        seen.add(name)
        module, param, diff = found
        if diff is None:
            continue
        changed += 1
        if low_memory and param == "weight" and diff.dim() >= 2:
            total = float(diff.float().pow(2).sum())
            diff, rel = low_rank_approximation(DenseDelta(diff), energy, _budget_rank(diff, budget))
            err_num, err_den = err_num + rel * rel * total, err_den + total
        parts.setdefault(module, {})[param] = diff
    missing = sorted(set(loaded) - seen)
    if missing:
        raise CheckpointMismatch(f"base checkpoint lacks {len(missing)} UNet tensors of the loaded model, e.g. "
                                 f"'{missing[0]}': the two are different architectures")
    deltas = {module: [_layer_delta(p)] for module, p in parts.items()}
    nbytes = sum(d[0].nbytes() for d in deltas.values())
    unet_nbytes = sum(p.numel() * p.element_size() for p in loaded.values())
    rel_error = (err_num / err_den) ** 0.5 if err_den else 0.0
    return CheckpointDeltas(deltas, changed, len(loaded), nbytes, unet_nbytes, rel_error)


def _difference(unet: nn.Module, loaded: dict, name: str, tensor: torch.Tensor,
                original: Optional[Callable[[nn.Module, str], torch.Tensor]]):
    """(module, param, loaded − base or None if equal) for one base tensor; None for buffers to skip."""
    if name not in loaded:
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            return None
        raise CheckpointMismatch(f"base checkpoint has UNet tensor '{name}' that the loaded model lacks: "
                                 "the two are different architectures")
    module, param = _owner(unet, name)
    ours = (original(module, param) if original else loaded[name]).detach()
    if tuple(ours.shape) != tuple(tensor.shape):
        raise CheckpointMismatch(f"base checkpoint tensor '{name}' has {_describe(tensor.shape, name)}, the loaded "
                                 f"model has {_describe(ours.shape, name)}: not the base of this model")
    diff = ours.to("cpu", torch.float32) - tensor.to(torch.float32)
    if not bool(diff.any()):
        return module, param, None
    if not is_supported(module):
        raise CheckpointMismatch(f"tensor '{name}' differs but belongs to a {type(module).__name__}, "
                                 "which PG cannot interpolate")
    return module, param, diff.to(difference_dtype(ours.dtype))


def _layer_delta(params: dict) -> LayerDelta:
    """One layer's weight and bias differences as one delta (a factorized weight keeps its bias)."""
    weight, bias = params.get("weight"), params.get("bias")
    if isinstance(weight, LowRankDelta):
        weight.bias = bias
        return weight
    if isinstance(weight, DenseDelta):
        return DenseDelta(weight.weight, bias)
    return DenseDelta(weight, bias)


def _budget_rank(w: torch.Tensor, budget: float) -> Optional[int]:
    """Largest rank whose two factors stay within `budget` of the weight's size (at least 1)."""
    if w is None or w.dim() < 2:
        return None
    rows, cols = w.shape[0], w[0].numel()
    return max(1, int(budget * rows * cols / (rows + cols)))


GIB = 2 ** 30


def free_host_memory() -> Optional[int]:
    """Bytes of RAM the OS can give now (Linux MemAvailable); None where that cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_device_memory(device: torch.device) -> Optional[int]:
    """Bytes a CUDA device can still allocate (free plus what torch holds unused); None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def exact_mode_shortfall(unet: nn.Module, device: torch.device, compute_dtype: torch.dtype, read_base: bool,
                         keep_on_device: bool) -> Optional[str]:
    """None when exact mode fits now, else what it needs and what is free (a phrase for the error message).

    Exact mode holds the differences in RAM (one UNet in its storage dtype, an upper bound: a fine-tune
    usually changes every tensor) and, for the pass, θ_ω of every changed layer on the compute device
    (one UNet in the compute dtype). Checked before the base is read, so a job that cannot fit is
    refused before sampling instead of failing half-way with an out-of-memory error.
    """
    params = list(unet.parameters())
    stored = sum(p.numel() * p.element_size() for p in params) if read_base else 0
    weak = sum(p.numel() for p in params) * (torch.finfo(compute_dtype).bits // 8) if keep_on_device else 0
    on_host = device.type == "cpu"
    needs = [("RAM", stored + (weak if on_host else 0), free_host_memory())]
    if not on_host:
        needs.append((f"{device.type.upper()} memory", weak, free_device_memory(device)))
    short = [f"about {need / GIB:.1f} GiB of {kind} ({free / GIB:.1f} GiB free)"
             for kind, need, free in needs if need and free is not None and need > free]
    return " and ".join(short) or None


class DeltaCache:
    """Base-checkpoint differences kept between jobs (keyed by model, files and mode); `size` entries."""

    def __init__(self, size: int = 1):
        self.size = size
        self._entries: dict[tuple, CheckpointDeltas] = {}
        self.builds = 0  # how many times a base was read from disk (tests and the benchmark check it)

    def resize(self, size: int) -> None:
        """Keep at most `size` entries from now on, dropping the oldest at once."""
        self.size = size
        while len(self._entries) > max(size, 0):
            self._entries.pop(next(iter(self._entries)))

    def get(self, key: tuple, build: Callable[[], CheckpointDeltas]) -> CheckpointDeltas:
        """The cached differences for `key`, building (reading the base) only on a miss."""
        if key in self._entries:
            return self._entries[key]
        entry = build()
        self.builds += 1
        if self.size > 0:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
