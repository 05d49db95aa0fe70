"""Per-call cost of PG's correction on one Flux-single-block-sized fused Linear (issue 18 item 2, P1a).

    OMP_NUM_THREADS=1 python bench/dit_offset_bench.py [--tokens 128] [--rank 16] [--reps 7] [--device cpu]

Flux's `single_blocks.N.linear1` is a 3072 -> 21504 Linear holding q | k | v | MLP (3·3072 + 12288 rows).
A diffusers / ai-toolkit LoRA patches it as four offset entries (to_q, to_k, to_v, proj_mlp at
(0, start, length), Neo's comfy/utils.py:227-232 at de2193d). One call of 2 rows (cond, uncond), the
uncond row weak, `--tokens` tokens each. Timed, each the median of `--reps` runs: the layer's forward
without hooks (the CFG call), and PG's forward hook alone on that call's output (what PG adds), for:

* offset   PG with the four entries as thin products into their columns (SlicedLowRankDelta, tiled);
* qkv      PG with only q, k, v patched (the MLP rows untouched: the zero-filled form);
* whole    PG with one LoRA on the whole weight (kohya's `linear1` key: LowRankDelta), for comparison;
* dense    PG with a dense [21504, 3072] difference: what offset entries got before (two host merges).

Prints each hook's time and (plain + hook) / plain; exits 0. The offset and dense corrections are checked
against each other first. Timing the hook alone keeps the other processes on a shared CPU out of the ratio
(end to end, the forward's own noise is larger than the correction).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pg_ext.branch import WeakBranch  # noqa: E402
from pg_ext.deltas import DenseDelta, LowRankDelta, SlicedLowRankDelta  # noqa: E402

HIDDEN, MLP = 3072, 12288


def deltas(rank: int, dtype: torch.dtype, gen: torch.Generator) -> dict:
    def factors(rows: int):
        return (torch.randn(rank, HIDDEN, generator=gen).to(dtype) * 0.02,
                torch.randn(rows, rank, generator=gen).to(dtype) * 0.02)

    parts = [(0, HIDDEN), (HIDDEN, HIDDEN), (2 * HIDDEN, HIDDEN), (3 * HIDDEN, MLP)]
    made = [factors(length) for _, length in parts]
    out = 3 * HIDDEN + MLP
    offset = SlicedLowRankDelta(starts=tuple(s for s, _ in parts), downs=tuple(d for d, _ in made),
                                ups=tuple(u for _, u in made), scales=(1.0,) * 4, out_features=out)
    qkv = SlicedLowRankDelta(starts=tuple(s for s, _ in parts[:3]), downs=tuple(d for d, _ in made[:3]),
                             ups=tuple(u for _, u in made[:3]), scales=(1.0,) * 3, out_features=out)
    down, up = factors(out)
    return {"offset": offset, "qkv": qkv, "whole": LowRankDelta(down, up), "dense": offset.dense()}


def timed_plain(layer: nn.Module, x: torch.Tensor, sync) -> float:
    start = time.perf_counter()
    layer(x)
    sync()
    return time.perf_counter() - start


def timed_hook(layer: nn.Module, x: torch.Tensor, delta, mask: torch.Tensor, sync, reps: int) -> list[float]:
    """The correction alone: PG's forward hook on the output of one call (what PG adds to the host's call)."""
    with WeakBranch(0.3, {layer: [delta]}) as branch:
        branch.mask = mask
        out = layer(x)  # places the delta on the device once, as a run does
        times = []
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            branch._additive_hook(layer, (x,), out)
            sync()
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(HIDDEN, 3 * HIDDEN + MLP).to(device, dtype).requires_grad_(False)
    x = torch.randn(2, args.tokens, HIDDEN, generator=gen).to(device, dtype)
    mask = torch.tensor([False, True])
    found = {k: v for k, v in deltas(args.rank, dtype, gen).items()}
    with torch.no_grad():
        got = {}
        for name in ("offset", "dense"):
            with WeakBranch(0.3, {layer: [found[name]]}) as branch:
                branch.mask = mask
                got[name] = layer(x)
        err = float((got["offset"] - got["dense"]).abs().max())
        print(f"offset vs dense correction: max |diff| {err:.2e}")
        plain = statistics.median([timed_plain(layer, x, sync) for _ in range(args.reps)])
        hooks = {name: statistics.median(timed_hook(layer, x, found[name], mask, sync, args.reps))
                 for name in ("offset", "qkv", "whole", "dense")}
    print(f"Linear {HIDDEN} -> {3 * HIDDEN + MLP}, rank {args.rank}, 2 rows x {args.tokens} tokens (1 weak), "
          f"{args.dtype} on {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"median of {args.reps}")
    print(f"  plain   forward {plain * 1e3:9.2f} ms")
    for name, hook in hooks.items():
        print(f"  {name:7s} hook    {hook * 1e3:9.2f} ms   PG call / plain call x{(plain + hook) / plain:.4f}")


if __name__ == "__main__":
    main()
