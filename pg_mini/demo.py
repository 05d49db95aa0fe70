"""The miniature's demo: CFG at a few scales vs Personalization Guidance over ω (and autoguidance).

    python -m pg_mini.demo [--out out/pg_demo.png] [--model lora] [--quick]

Samples "a sks square" in contexts its five training images never showed (coloured backgrounds,
left/right), writes a labelled PNG and prints subject and text scores per setting.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from . import data
from .guide import MODELS, Guidance, load_personalized, sample
from .io import weights_path
from .score import load_judge, score

SETTINGS = (Guidance("cfg", 3.0), Guidance("cfg", 7.5), Guidance("pg", 3.0, 0.5), Guidance("pg", 3.0, 0.25),
            Guidance("pg", 3.0, 0.0), Guidance("ag", 3.0, 0.0))
SHOWN = (("red", "left"), ("blue", "right"), ("green", "left"), ("purple", "right"))
CELL, PER_CELL, LABEL_W, HEADER_H = 64, 2, 230, 34


def to_pil(image: torch.Tensor, size: int = CELL) -> Image.Image:
    """A [3, 32, 32] image in [-1, 1] as a nearest-neighbour-upscaled PIL image."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def grid(columns: list[tuple[str, torch.Tensor]], row_labels: list[str], references: torch.Tensor) -> Image.Image:
    """Labelled sheet: a header of the training images, then one row per prompt, one column per setting."""
    col_w = CELL * PER_CELL + 8
    width = LABEL_W + col_w * len(columns)
    top = HEADER_H + CELL + 16
    sheet = Image.new("RGB", (width, top + HEADER_H + CELL * len(row_labels) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), "training images of 'sks' (gray background, centre); rows below: new contexts", fill="black")
    for i, ref in enumerate(references):
        sheet.paste(to_pil(ref), (LABEL_W + i * (CELL + 4), HEADER_H - 8))
    for c, (label, images) in enumerate(columns):
        x = LABEL_W + c * col_w
        draw.text((x + 4, top + 10), label, fill="black")
        for r in range(len(row_labels)):
            for k in range(PER_CELL):
                sheet.paste(to_pil(images[r * PER_CELL + k]), (x + k * CELL, top + HEADER_H + r * CELL))
    for r, label in enumerate(row_labels):
        draw.text((8, top + HEADER_H + r * CELL + CELL // 2 - 6), label, fill="black")
    return sheet


def table(rows: list[tuple[str, dict]]) -> str:
    """Score table: mean ± standard error per setting."""
    keys = ("subject", "bg_acc", "pos_acc", "text", "bg_err")
    lines = [f"{'setting':<18}" + "".join(f"{k:>16}" for k in keys)]
    for label, scores in rows:
        cells = []
        for k in keys:
            v = scores[k]
            cells.append(f"{v.mean().item():>9.3f}±{v.std().item() / len(v) ** 0.5:.3f}")
        lines.append(f"{label:<18}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def run(out: str, model_name: str, steps: int, score_per_context: int, seed: int = 0) -> str:
    """Sample the sheet and the scored batch for every setting; write the PNG, return the table."""
    model = load_personalized(model_name)
    judge = load_judge(weights_path("judge"))
    shown = [data.subject_prompt(bg, pos) for bg, pos in SHOWN for _ in range(PER_CELL)]
    contexts = [c for c in data.new_contexts() for _ in range(score_per_context)]
    scored = [data.subject_prompt(bg, pos) for bg, pos in contexts]
    bar = tqdm(total=len(SETTINGS) * 2 * steps, desc="sampling", unit="step")
    columns, rows = [], []
    for g in SETTINGS:
        columns.append((g.label, sample(model, shown, g, seed, steps, bar.update)))
        images = sample(model, scored, g, seed + 1, steps, bar.update)
        rows.append((g.label, score(images, [b for b, _ in contexts], [p for _, p in contexts], judge)))
    bar.close()
    labels = [f"{bg} background, {pos}" for bg, pos in SHOWN]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid(columns, labels, data.subject_images()).save(out)
    return table(rows)


def main(argv=None) -> None:
    """Command line of the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("out", "pg_demo.png"))
    parser.add_argument("--model", default="lora", choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="4 sampling steps, 1 scored sample per context (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    steps, per_context = (4, 1) if args.quick else (16, 3)
    report = run(args.out, args.model, steps, per_context, args.seed)
    print(f"\nmodel {args.model}, prompts 'a sks square on a <colour> background at the <left|right>', "
          f"{per_context * len(data.new_contexts())} samples per setting (mean ± s.e.)")
    print("subject = classifier P(subject); bg_acc, pos_acc = background colour / position right; text = both right")
    print(report)
    print(f"wrote {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
