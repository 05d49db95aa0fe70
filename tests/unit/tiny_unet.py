"""A tiny real UNet with the layer types of SD's (Conv2d, GroupNorm, LayerNorm, Linear, cross-attention).

`forward(x, timesteps, context)` follows ldm's UNetModel contract, so `pg_ext.router` finds `context`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, d = q.shape
        split = lambda t: t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, channels: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1, self.attn1 = nn.LayerNorm(channels), CrossAttention(channels, channels)
        self.norm2, self.attn2 = nn.LayerNorm(channels), CrossAttention(channels, context_dim)
        self.norm3, self.ff = nn.LayerNorm(channels), nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(),
                                                                    nn.Linear(2 * channels, channels))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        t = t + self.attn1(self.norm1(t))
        t = t + self.attn2(self.norm2(t), context)
        t = t + self.ff(self.norm3(t))
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(4, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, channels)
        self.norm2, self.conv2 = nn.GroupNorm(4, channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class TinyUNet(nn.Module):
    def __init__(self, channels: int = 16, context_dim: int = 12, in_channels: int = 4):
        super().__init__()
        self.channels = channels
        self.time_embed = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.res = ResBlock(channels, channels)
        self.attn = TransformerBlock(channels, context_dim)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.mid = TransformerBlock(channels, context_dim)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(channels, channels, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(), nn.Conv2d(channels, in_channels, 3, padding=1))

    def timestep_embedding(self, t):
        half = self.channels // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, timesteps=None, context=None, **kwargs):
        emb = self.time_embed(self.timestep_embedding(timesteps))
        h = self.res(self.conv_in(x), emb)
        h = self.attn(h, context)
        h = h + self.up(self.mid(self.down(h), context))
        return self.out(h)


def perturbed(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A 'fine-tuned' copy: every parameter moved by seeded noise (a DreamBooth stand-in)."""
    import copy

    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() if p.numel() > 1 else 1.0))
    return tuned


def materialize_weak(base: nn.Module, tuned: nn.Module, omega: float) -> nn.Module:
    """θ_ω = lerp(θ, θ', ω) as a separate model: the slow two-model reference."""
    import copy

    weak = copy.deepcopy(tuned)
    with torch.no_grad():
        for (name, p), (_, b) in zip(weak.named_parameters(), base.named_parameters()):
            p.copy_(torch.lerp(b, p, omega))
    return weak


class StackedTinyUNet(TinyUNet):
    """TinyUNet with `depth` extra ResBlock + TransformerBlock pairs: many more hooked layers, same contract."""

    def __init__(self, depth: int, channels: int = 16, context_dim: int = 12, in_channels: int = 4):
        super().__init__(channels, context_dim, in_channels)
        self.stack = nn.ModuleList(nn.ModuleList([ResBlock(channels, channels), TransformerBlock(channels, context_dim)])
                                   for _ in range(depth))

    def forward(self, x, timesteps=None, context=None, **kwargs):
        emb = self.time_embed(self.timestep_embedding(timesteps))
        h = self.res(self.conv_in(x), emb)
        for res, attn in self.stack:
            h = attn(res(h, emb), context)
        h = self.attn(h, context)
        h = h + self.up(self.mid(self.down(h), context))
        return self.out(h)
