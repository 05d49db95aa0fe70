"""What a changing ω costs on the miniature: CFG vs constant-ω PG vs a linear ω ramp vs auto, per personalization.

    python bench/schedule_cost.py [--images 50] [--steps 12] [--repeats 5]

The LoRA runs pg_ext's additive path (any ω per step is free); the full fine-tune runs the exact-weights
path, which re-forms its cached θ_ω weights at every step whose ω differs from the previous one. Settings
are timed interleaved, `repeats` times each, and the median is printed (the machine is shared).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pg_mini import data  # noqa: E402
from pg_mini.guide import Guidance, load_personalized, sample  # noqa: E402
from pg_mini.io import load_base  # noqa: E402

SETTINGS = (Guidance("cfg", 3.0), Guidance("pg", 3.0, 0.5), Guidance("pg", 3.0, 1.0, omega_end=0.0),
            Guidance("pg", 3.0, auto=True))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_base()
    contexts = data.new_contexts()
    prompts = [data.subject_prompt(*contexts[i % len(contexts)]) for i in range(args.images)]
    for name in ("ft", "lora"):
        model = load_personalized(name, base)
        times = {g.label: [] for g in SETTINGS}
        for _ in range(args.repeats):
            for g in SETTINGS:
                start = time.perf_counter()
                sample(model, prompts, g, seed=0, steps=args.steps)
                times[g.label].append(time.perf_counter() - start)
        cfg = statistics.median(times[SETTINGS[0].label])
        for label, seconds in times.items():
            median = statistics.median(seconds)
            print(f"{name:<5}{label:<20} median {median:.2f}s  ({median / cfg:.2f}× CFG)  runs "
                  + " ".join(f"{s:.2f}" for s in seconds), flush=True)


if __name__ == "__main__":
    main()
