"""Frontier plot drawn with Pillow (no matplotlib needed): subject score vs text accuracy per model."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw

COLORS = {"cfg": (40, 90, 200), "pg": (210, 40, 40), "sched": (230, 140, 0), "auto": (150, 40, 180),
          "ag": (30, 150, 60)}
PANEL_W, PANEL_H, MARGIN = 360, 300, 44
AXIS = {"bg_acc": "background colour accuracy", "text": "background AND position right"}


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper-right envelope: points no other point beats on both text and subject, by text."""
    front, best = [], -1.0
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def _panel(draw: ImageDraw.ImageDraw, ox: int, oy: int, title: str, rows: list[dict], key: str, text: str) -> None:
    x0, y0, x1, y1 = ox + MARGIN, oy + 24, ox + PANEL_W - 12, oy + PANEL_H - MARGIN

    def at(tx: float, sy: float) -> tuple[float, float]:
        return x0 + tx * (x1 - x0), y1 - sy * (y1 - y0)

    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.text((x0 + v * (x1 - x0) - 8, y1 + 4), f"{v:g}", fill=(0, 0, 0))
        draw.text((ox + 8, y1 - v * (y1 - y0) - 6), f"{v:g}", fill=(0, 0, 0))
    draw.text((ox + MARGIN, oy + 6), title, fill=(0, 0, 0))
    draw.text((x0 + 60, y1 + 18), f"text fidelity: {AXIS.get(text, text)}", fill=(0, 0, 0))
    for method, color in COLORS.items():
        pts = [(r[text], r[key]) for r in rows if r["method"] == method]
        for tx, sy in pts:
            cx, cy = at(tx, sy)
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        front = [at(tx, sy) for tx, sy in pareto(pts)]
        if len(front) > 1:
            draw.line(front, fill=color, width=2)


def plot_frontiers(results: list[dict], path: str, key: str = "subject", text: str = "bg_acc") -> None:
    """2×2 panels (one per personalization) of `key` vs text fidelity `text`; CFG blue, PG red (constant ω),
    SCHED orange (ω over the steps), AUTO purple (the automatic ω), AG green."""
    names = list(dict.fromkeys(r["model"] for r in results))
    cols = 2
    rows_n = (len(names) + cols - 1) // cols
    img = Image.new("RGB", (PANEL_W * cols, PANEL_H * rows_n + 30), "white")
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        _panel(draw, (i % cols) * PANEL_W, 30 + (i // cols) * PANEL_H, f"{name}: {key} (y) vs {text} (x)",
               [r for r in results if r["model"] == name], key, text)
    x = 10
    for method, color in COLORS.items():
        draw.rectangle([x, 10, x + 10, 20], fill=color)
        draw.text((x + 14, 9), method.upper(), fill=(0, 0, 0))
        x += 60
    draw.text((x + 10, 9), "dots: settings; lines: each method's frontier", fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
