"""Rows of an earlier frontier run read back from docs/miniature.md's per-setting table (issue 19, rounds 1-3).

    python bench/doc_rows.py --no-late-band --json out/doc_sched_rows.json

The table gives subject, feature sim, bg acc, bg error and "both right" per setting (100 samples, the same
seeds as every run: bench/frontier.py is deterministic, and the rows that were re-run reproduce these digits).
Accuracies are k/100, so two decimals are exact; subject and sim are rounded to 3 decimals. Used with
`bench/frontier.py --merge` where re-running the ramps and bands (22 settings, ≈ 2 h on the shared machine)
did not fit; each row says so in "source".
"""
from __future__ import annotations

import argparse
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\| (ft|lora) \| PG ω=([\d.]+)(?:→([\d.]+))?(?: \[([\d.]+),([\d.]+)\])? s=([\d.]+) \| (.+) \|$")


def _pm(cell: str) -> tuple[float, float]:
    mean, se = cell.split("±")
    return float(mean), float(se)


def rows(path: str = os.path.join(ROOT, "docs", "miniature.md")) -> list[dict]:
    text = open(path, encoding="utf-8").read()
    section = text[text.index("Every schedule setting and the round-3 constant settings"):]
    section = section[:section.index("### Frontier with the schedules")]
    out = []
    for line in section.splitlines():
        m = ROW.match(line.strip())
        if not m:
            continue
        model, w, w_end, start, end, scale, rest = m.groups()
        cells = [c.strip() for c in rest.split("|")]
        (subject, subject_se), (sim, sim_se), (bg, bg_se), (bg_err, bg_err_se), (both, both_se) = map(_pm, cells)
        start, end = float(start or 0.0), float(end or 1.0)
        omega_end = float(w_end) if w_end is not None else None
        scheduled = omega_end is not None or (start, end) != (0.0, 1.0)
        label = (f"PG w={float(w):g}" + (f">{omega_end:g}" if omega_end is not None else "")
                 + ("" if (start, end) == (0.0, 1.0) else f" [{start:g},{end:g}]") + f" s={float(scale):g}")
        out.append({"model": model, "method": "sched" if scheduled else "pg", "scale": float(scale), "omega": float(w),
                    "omega_end": omega_end, "start": start, "end": end, "label": label,
                    "subject": subject, "subject_se": subject_se, "sim": sim, "sim_se": sim_se,
                    "bg_acc": bg, "bg_acc_se": bg_se, "bg_err": bg_err, "bg_err_se": bg_err_se,
                    "text": both, "text_se": both_se, "source": "docs/miniature.md (rounds 1-3)"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=os.path.join(ROOT, "out", "frontier_doc_rows.json"))
    parser.add_argument("--all", action="store_true", help="also the constant-ω rows of round 3")
    parser.add_argument("--no-late-band", action="store_true",
                        help="without the late band (ω = 0 on [0.5, 1]): 'PG auto' rows are the same images")
    args = parser.parse_args()
    got = [r for r in rows() if (args.all or r["method"] == "sched")
           and not (args.no_late_band and r["label"].startswith("PG w=0 [0.5,1] "))]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(got, f, indent=1)
    print(f"{len(got)} rows -> {args.json}")


if __name__ == "__main__":
    main()
