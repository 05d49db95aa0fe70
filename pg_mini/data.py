"""Procedural data: coloured shapes on coloured backgrounds at left/centre/right, their prompts, the subject."""
from __future__ import annotations

import random
from typing import Optional

import torch

SIZE = 32
COLORS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
    "purple": (0.6, 0.15, 0.75), "orange": (1.0, 0.55, 0.0), "white": (0.97, 0.97, 0.97), "gray": (0.5, 0.5, 0.5),
    "cyan": (0.1, 0.85, 0.9), "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {"left": 7.5, "centre": 15.5, "right": 23.5}
SUBJECT_TOKEN = "sks"
CLASS_NOUN = "square"
SUBJECT_COLORS = ((0.95, 0.9, 0.1), (0.05, 0.05, 0.05))  # yellow/black checks: a look the base never saw
SUBJECT_BACKGROUND, SUBJECT_POSITION = "gray", "centre"  # the narrow context of the five training images
VOCAB = ["<pad>", "a", "on", "background", "at", "the", SUBJECT_TOKEN] + list(COLORS) + list(SHAPES) + list(POSITIONS)
TOKENS = 10


def tokenize(prompt: str) -> torch.Tensor:
    """Word ids [TOKENS] of a prompt, padded with <pad> (id 0); the empty prompt is all padding."""
    ids = [VOCAB.index(w) for w in prompt.split()][:TOKENS]
    return torch.tensor(ids + [0] * (TOKENS - len(ids)), dtype=torch.long)


def prompt(shape: str, color: Optional[str] = None, bg: Optional[str] = None, pos: Optional[str] = None) -> str:
    """'a [color] shape [on a bg background] [at the pos]'; left-out attributes are left to the model."""
    words = ["a"] + ([color] if color else []) + [shape]
    if bg:
        words += ["on", "a", bg, "background"]
    if pos:
        words += ["at", "the", pos]
    return " ".join(words)


def subject_prompt(bg: Optional[str] = None, pos: Optional[str] = None) -> str:
    """The subject's prompt: the rare token takes the place of the colour word."""
    return prompt(CLASS_NOUN, SUBJECT_TOKEN, bg, pos)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(SIZE, dtype=torch.float32)
    return coords[:, None].expand(SIZE, SIZE), coords[None, :].expand(SIZE, SIZE)


def shape_mask(shape: str, cx: float, cy: float, r: float) -> torch.Tensor:
    """[32, 32] bool mask of a shape of half-size r centred at (cx, cy)."""
    y, x = _grid()
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.58)
    if shape == "cross":
        return ((dx.abs() <= r * 0.33) & (dy.abs() <= r)) | ((dy.abs() <= r * 0.33) & (dx.abs() <= r))
    raise ValueError(f"unknown shape {shape!r}")


def render(shape: str, color, bg: str, pos: str, rng: random.Random, checkered: bool = False) -> torch.Tensor:
    """[3, 32, 32] image in [-1, 1]: the shape (or the checkered subject) with small size/place jitter."""
    r = rng.uniform(5.5, 7.0)
    cx = POSITIONS[pos] + rng.uniform(-1.5, 1.5)
    cy = 15.5 + rng.uniform(-2.0, 2.0)
    img = torch.tensor(COLORS[bg]).view(3, 1, 1).expand(3, SIZE, SIZE).clone()
    mask = shape_mask(shape, cx, cy, r)
    if checkered:
        y, x = _grid()
        cell = ((torch.div(x - cx + 16, 3, rounding_mode="floor") + torch.div(y - cy + 16, 3, rounding_mode="floor")) % 2).bool()
        for c in range(3):
            img[c][mask & cell] = SUBJECT_COLORS[0][c]
            img[c][mask & ~cell] = SUBJECT_COLORS[1][c]
    else:
        rgb = COLORS[color] if isinstance(color, str) else color
        for c in range(3):
            img[c][mask] = rgb[c]
    return img * 2 - 1


def random_scene(rng: random.Random) -> tuple[str, str, str, str]:
    """(shape, colour, background, position) with the shape's colour different from the background's."""
    shape, pos = rng.choice(SHAPES), rng.choice(list(POSITIONS))
    bg = rng.choice(list(COLORS))
    color = rng.choice([c for c in COLORS if c != bg])
    return shape, color, bg, pos


def base_example(rng: random.Random, drop: float = 0.2) -> tuple[torch.Tensor, str]:
    """One base-training pair; each attribute word is dropped with probability `drop` so partial prompts work."""
    shape, color, bg, pos = random_scene(rng)
    img = render(shape, color, bg, pos, rng)
    keep = [rng.random() >= drop for _ in range(3)]
    return img, prompt(shape, color if keep[0] else None, bg if keep[1] else None, pos if keep[2] else None)


def subject_images(n: int = 5, seed: int = 5) -> torch.Tensor:
    """[n, 3, 32, 32] the subject's reference images: one narrow context (gray background, centre)."""
    rng = random.Random(seed)
    return torch.stack([render(CLASS_NOUN, None, SUBJECT_BACKGROUND, SUBJECT_POSITION, rng, checkered=True)
                        for _ in range(n)])


def new_contexts() -> list[tuple[str, str]]:
    """(background, position) pairs the subject never appeared in: the text-fidelity test prompts."""
    return [(bg, pos) for bg in ("red", "blue", "green", "purple", "white", "orange") for pos in ("left", "right")]
