"""Subject-vs-text frontier of CFG, Personalization Guidance and autoguidance on the miniature model.

    python bench/frontier.py [--samples 100] [--steps 12] [--models ft ft_noprior lora lora_noprior]

For every shipped personalization and every guidance setting, samples "a sks square on a <bg>
background at the <left|right>" in the 12 contexts the subject was never trained in (same seeds for
every setting), scores subject fidelity (classifier probability, EfficientNet-Lite0 feature similarity
to the training images) and text fidelity (background colour error/accuracy, position accuracy), and
prints each method's frontier: the best subject score among its settings whose text accuracy (background
AND position right, or background alone) reaches each level. Writes out/frontier.json,
docs/img/frontier.png (x: background accuracy) and docs/img/frontier_both.png (x: both right).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pg_mini import data  # noqa: E402
from pg_mini.guide import MODELS, Guidance, load_personalized, sample  # noqa: E402
from pg_mini.io import load_base, weights_path  # noqa: E402
from pg_mini.score import Features, load_judge, score  # noqa: E402

SETTINGS = ([Guidance("cfg", s) for s in (1.5, 3.0, 5.0, 8.0)]
            + [Guidance("pg", s, w) for w, s in ((0.0, 1.5), (0.0, 3.0), (0.5, 1.5), (0.5, 3.0), (0.75, 3.0), (0.75, 5.0))]
            + [Guidance("ag", s, 0.0) for s in (1.5, 3.0)]
            # ω over the steps (issue 19): linear ramps falling (subject unlearned as details form) and
            # rising, and ω = 0 only inside a band of the steps (plain CFG outside), mid, late and early
            + [Guidance("pg", s, 1.0, omega_end=0.0) for s in (3.0, 5.0)]
            + [Guidance("pg", s, 0.0, omega_end=1.0) for s in (3.0, 5.0)]
            + [Guidance("pg", s, 0.0, start=0.25, end=0.75) for s in (3.0, 5.0)]
            + [Guidance("pg", 3.0, 0.0, start=0.5, end=1.0), Guidance("pg", 3.0, 0.0, start=0.0, end=0.5)]
            # second round, after the first showed the late schedules ahead at s = 3 and 5: the scales between
            + [Guidance("pg", s, 0.0, start=0.5, end=1.0) for s in (4.0, 5.0)] + [Guidance("pg", 4.0, 1.0, omega_end=0.0)]
            # third round: constant ω at those scales too, so the schedules do not win by having more settings
            + [Guidance("pg", s, w) for w, s in ((0.0, 4.0), (0.0, 5.0), (0.5, 5.0))]
            # fourth round (issue 19 item 2): the automatic ω (pg_ext.schedule 'auto') over the CFG scale, and
            # the two candidates for it that were measured with it: a ramp 1 -> 0 over the middle half, and
            # a linear fall 1 -> 0 over the second half (plain CFG in the first)
            + [Guidance("pg", s, auto=True) for s in (2.0, 3.0, 4.0, 5.0, 6.0)]
            + [Guidance("pg", s, ramp=(0.25, 0.75)) for s in (3.0, 4.0, 5.0)]
            + [Guidance("pg", s, 1.0, omega_end=0.0, start=0.5) for s in (3.0, 4.0, 5.0)])
METHODS = ("cfg", "pg", "sched", "auto", "ag")  # sched: PG whose ω changes over the steps; auto: pg_ext's 'auto'
SCHEDULED = ("sched", "auto")  # issue 19's rule: the best of the schedules and auto against constant ω
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ("subject", "sim", "text", "bg_acc", "bg_err", "pos_acc")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(model_names, samples: int, steps: int, batch: int = 100, labels=None, json_path=None,
            seed_base: int = 1000) -> list[dict]:
    """One row per (model, setting): mean and standard error of every metric over `samples` images.

    `labels`: only the settings with these labels (a later round joined with --merge), in this order;
    `json_path`: the rows so far are written there after each setting (a run cut short keeps them);
    `seed_base`: the noise seeds (1000: every documented run; another value: a held-out replication)."""
    base, judge, features = load_base(), load_judge(weights_path("judge")), Features()
    contexts = data.new_contexts()
    contexts = [contexts[i % len(contexts)] for i in range(samples)]
    results = []
    for name in model_names:
        model = load_personalized(name, base)
        by_label = {g.label: g for g in SETTINGS}
        missing = [label for label in labels or () if label not in by_label]
        if missing:
            raise SystemExit(f"unknown setting labels: {missing}")
        for g in [by_label[label] for label in labels] if labels else SETTINGS:
            start = time.time()
            parts = []
            for lo in range(0, samples, batch):
                chunk = contexts[lo:lo + batch]
                images = sample(model, [data.subject_prompt(b, p) for b, p in chunk], g, seed=lo + seed_base, steps=steps)
                parts.append(score(images, [b for b, _ in chunk], [p for _, p in chunk], judge, features))
            scores = {k: torch.cat([p[k] for p in parts]) for k in METRICS}
            method = ("auto" if g.auto else "sched") if g.kind == "pg" and g.scheduled else g.kind
            row = {"model": name, "method": method, "scale": g.scale, "omega": g.omega, "omega_end": g.omega_end,
                   "start": g.start, "end": g.end, "label": g.label, "seconds": time.time() - start}
            for k, v in scores.items():
                row[k] = v.mean().item()
                row[k + "_se"] = v.std().item() / len(v) ** 0.5
            results.append(row)
            print(f"{name:<13}{g.label:<18} subject {row['subject']:.3f}±{row['subject_se']:.3f} "
                  f"sim {row['sim']:.3f}±{row['sim_se']:.3f} text {row['text']:.3f}±{row['text_se']:.3f} "
                  f"bg_acc {row['bg_acc']:.2f} bg_err {row['bg_err']:.3f}±{row['bg_err_se']:.3f} "
                  f"pos {row['pos_acc']:.3f} ({time.time() - start:.0f}s)", flush=True)
            if json_path:
                with open(json_path, "w") as f:
                    json.dump(results, f, indent=1)
    return results


def frontier(rows: list[dict], key: str = "subject", text: str = "text") -> dict[float, dict]:
    """Best row by `key` among rows whose text fidelity `text` reaches each level (missing when none does)."""
    best = {}
    for level in LEVELS:
        ok = [r for r in rows if r[text] >= level]
        if ok:
            best[level] = max(ok, key=lambda r: r[key])
    return best


def compare(a: dict, b: dict, key: str) -> str:
    """'above' / 'below' / 'tie' of a vs b by more than two standard errors of the difference."""
    diff = a[key] - b[key]
    se = (a[key + "_se"] ** 2 + b[key + "_se"] ** 2) ** 0.5
    return "above" if diff > 2 * se else "below" if diff < -2 * se else "tie"


def report(results: list[dict], key: str = "subject", text: str = "text") -> str:
    """Frontier table per model and method, with PG-vs-CFG / PG-vs-AG and schedules-vs-PG verdicts per level."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        fronts = {m: frontier([r for r in rows if r["method"] == m], key, text) for m in METHODS}
        lines.append(f"\n{name}: best {key} at {text} >= level  (mean ± s.e. [setting])")
        lines.append(f"{'level':<7}" + "".join(f"{m.upper():<38}" for m in METHODS)
                     + "PG vs CFG / AG; SCHED vs PG; AUTO vs PG / CFG")
        for level in LEVELS:
            cells = []
            for m in METHODS:
                r = fronts[m].get(level)
                cells.append(f"{r[key]:.3f}±{r[key + '_se']:.3f} [{r['label']}]" if r else "-")
            verdict = [_verdict(fronts["pg"].get(level), fronts[m].get(level), key, "PG") for m in ("cfg", "ag")]
            sched = _verdict(fronts["sched"].get(level), fronts["pg"].get(level), key, "SCHED")
            auto = [_verdict(fronts["auto"].get(level), fronts[m].get(level), key, "AUTO") for m in ("pg", "cfg")]
            lines.append(f"{level:<7}" + "".join(f"{c:<38}" for c in cells) + " / ".join(verdict) + "; " + sched
                         + "; " + " / ".join(auto))
    return "\n".join(lines)


def _verdict(a: dict | None, b: dict | None, key: str, a_name: str) -> str:
    if a and b:
        return compare(a, b, key)
    return f"only {a_name}" if a else "none" if b else "-"


def schedules_beat_constant(results: list[dict], key: str, text: str,
                            methods: tuple = SCHEDULED) -> dict[str, tuple[bool, str]]:
    """Issue 19's rule per model: the frontier of `methods` (default: the schedules and auto together) is at
    or above constant-ω PG's at every level PG reaches (difference > −1 s.e. of the difference) and more than
    2 s.e. above it at one level at least."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        pg = frontier([r for r in rows if r["method"] == "pg"], key, text)
        sched = frontier([r for r in rows if r["method"] in methods], key, text)
        never_below, strictly_above, notes = True, False, []
        for level, constant in pg.items():
            best = sched.get(level)
            if best is None:
                never_below = False
                notes.append(f"{level:g}: no schedule")
                continue
            diff = best[key] - constant[key]
            se = (best[key + "_se"] ** 2 + constant[key + "_se"] ** 2) ** 0.5
            never_below &= diff > -se
            strictly_above |= diff > 2 * se
            notes.append(f"{level:g}: {diff:+.3f} ({diff / se:+.1f} s.e.)" if se else f"{level:g}: {diff:+.3f}")
        out[name] = (never_below and strictly_above, "; ".join(notes))
    return out


def main(argv=None) -> None:
    """Command line of the measurement."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--json", default=os.path.join(ROOT, "out", "frontier.json"))
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "frontier.png"))
    parser.add_argument("--from-json", action="store_true", help="re-print and re-plot saved results")
    parser.add_argument("--settings", nargs="+", metavar="LABEL", help="only these settings, by label")
    parser.add_argument("--seed-base", type=int, default=1000,
                        help="noise seeds (default 1000, as every documented run; another: a held-out replication)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="join saved results (e.g. one run per model) into --json, then print and plot")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    if args.merge:
        results = []
        for path in args.merge:
            with open(path) as f:
                results += json.load(f)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    elif args.from_json:
        with open(args.json) as f:
            results = json.load(f)
    else:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        results = measure(args.models, args.samples, args.steps, labels=args.settings, json_path=args.json,
                          seed_base=args.seed_base)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for text in ("text", "bg_acc"):
        for key in ("subject", "sim"):
            print(report(results, key, text))
    for methods, what in ((SCHEDULED, "schedules and auto"), (("auto",), "auto alone")):
        if not any(r["method"] in methods for r in results):
            continue
        print(f"\nissue 19 rule, {what}: >= constant-ω PG (within 1 s.e.) at every level and > 2 s.e. at one")
        for text in ("bg_acc", "text"):
            for key in ("subject", "sim"):
                for name, (ok, notes) in schedules_beat_constant(results, key, text, methods).items():
                    print(f"{name:<6}{key:<8}vs {text:<7} {'MET' if ok else 'not met'}  [{notes}]")
    from plot import plot_frontiers
    plot_frontiers(results, args.plot, "subject", "bg_acc")
    plot_frontiers(results, args.plot.replace(".png", "_sim.png"), "sim", "bg_acc")
    plot_frontiers(results, args.plot.replace(".png", "_both.png"), "subject", "text")
    print(f"\nwrote {args.json} and {args.plot} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
