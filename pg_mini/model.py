"""The miniature text-to-image model: a word-level text encoder and a UNet with self/cross-attention.

The UNet follows ldm's contract `forward(x, timesteps, context)` and holds only Linear, Conv2d,
GroupNorm and LayerNorm parameters, so pg_ext can correct its weak rows layer by layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import TOKENS, VOCAB

CONTEXT_DIM = 64


class TextEncoder(nn.Module):
    """Word embeddings + positions + two transformer layers: ids [B, T] -> context [B, T, 64]."""

    def __init__(self, dim: int = CONTEXT_DIM, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.position = nn.Embedding(TOKENS, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        return self.norm(self.blocks(h))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [B, dim] of continuous times t in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between."""

    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention from Linear projections (self-attention when context is None)."""

    def __init__(self, dim: int, context_dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class SpatialTransformer(nn.Module):
    """ldm-style block: self-attention, cross-attention to the text, feed-forward, with residuals."""

    def __init__(self, dim: int, context_dim: int = CONTEXT_DIM):
        super().__init__()
        self.norm = nn.GroupNorm(8, dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, dim)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, dim * 2), nn.Linear(dim * 2, dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        h1 = self.norm1(h)
        h = h + self.attn1(h1, h1)
        h = h + self.attn2(self.norm2(h), context)
        h = h + self.ff2(F.gelu(self.ff1(self.norm3(h))))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hh, ww))


class UNet(nn.Module):
    """32×32 UNet predicting v: levels 32/16/8 px, attention at 16 and 8 px; forward(x, timesteps, context)."""

    def __init__(self, ch: tuple = (32, 64, 96), context_dim: int = CONTEXT_DIM):
        super().__init__()
        c0, c1, c2 = ch
        tdim = c0 * 4
        self.ch = ch
        self.time1, self.time2 = nn.Linear(c0, tdim), nn.Linear(tdim, tdim)
        self.conv_in = nn.Conv2d(3, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, tdim)
        self.pool0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1, self.attn_d1 = ResBlock(c0, c1, tdim), SpatialTransformer(c1, context_dim)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2, self.attn_d2 = ResBlock(c1, c2, tdim), SpatialTransformer(c2, context_dim)
        self.mid1, self.attn_mid, self.mid2 = ResBlock(c2, c2, tdim), SpatialTransformer(c2, context_dim), ResBlock(c2, c2, tdim)
        self.up2, self.attn_u2 = ResBlock(c2 + c2, c2, tdim), SpatialTransformer(c2, context_dim)
        self.upconv1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.up1, self.attn_u1 = ResBlock(c1 + c1, c1, tdim), SpatialTransformer(c1, context_dim)
        self.upconv0 = nn.Conv2d(c1, c0, 3, padding=1)
        self.up0 = ResBlock(c0 + c0, c0, tdim)
        self.norm_out, self.conv_out = nn.GroupNorm(8, c0), nn.Conv2d(c0, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time2(F.silu(self.time1(timestep_embedding(timesteps, self.ch[0]))))
        h0 = self.down0(self.conv_in(x), emb)
        h1 = self.attn_d1(self.down1(self.pool0(h0), emb), context)
        h2 = self.attn_d2(self.down2(self.pool1(h1), emb), context)
        h = self.mid2(self.attn_mid(self.mid1(h2, emb), context), emb)
        h = self.attn_u2(self.up2(torch.cat([h, h2], 1), emb), context)
        h = self.upconv1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.attn_u1(self.up1(torch.cat([h, h1], 1), emb), context)
        h = self.upconv0(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up0(torch.cat([h, h0], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
