"""An SDXL-shaped model for the double (ours, not a host file): dict conditioning, two text encoders, a
pooled vector added to the UNet's time embedding. Served as `shared.sd_model` by tests/host/test_sdxl.py.

What it models (contract.SDXL_* names the facts and where the host has them):
- `conditioner.embedders`: two text embedders (input key "txt") whose `.wrapped` holds the layers the
  Lora extension names, "0_transformer_..." and "1_model_transformer_...", and a size embedder (input
  key "original_size_as_tuple", no `.wrapped`, no weights). Each embedder's output goes by its rank:
  [B, T, C] outputs are concatenated along C into "crossattn", [B, D] outputs along D into "vector".
  The second text embedder also gives a pooled [B, D] output from its first chunk.
- `get_learned_conditioning(texts)` reads `width`/`height` (default 1024) and `is_negative_prompt` from
  the texts; an empty negative prompt gets all-zero text outputs (crossattn and the pooled part of
  vector; the size part stays).
- `model` is a wrapper module whose forward(x, t, c) calls `diffusion_model(x, timesteps=t,
  context=c["crossattn"], y=c["vector"])`; `apply_model(x, t, cond)` calls `model(x, t, cond)`; keys it
  does not know (the denoiser's "c_concat") are ignored.
- `cond_stage_model` is the conditioner; `cond_stage_model_empty_prompt` is the crossattn of [""]
  encoded as a (not negative) prompt; `is_sdxl` is True.
"""
import math
import os
import sys

import torch
from torch import nn

from tiny_sd import DIM, TextEncoder, TextLayers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "unit"))
from tiny_unet import TinyUNet  # noqa: E402

POOLED = 10  # the second text encoder's pooled width
SIZE_FEATURES = 4  # sinusoid features per size number (height, width)
VECTOR = POOLED + 2 * SIZE_FEATURES
CROSSATTN = 2 * DIM


def _encode_chunks(layers, texts):
    """Hidden states [B, T, DIM] of every text's chunks (the SD 1.x double's tokenizer and chunking)."""
    per_text = [TextEncoder.chunks(t) for t in texts]
    n = max(len(c) for c in per_text)
    empty = TextEncoder.chunks("")[0]
    ids = torch.tensor([sum(c + [empty] * (n - len(c)), []) for c in per_text])
    return layers(ids)


class ClipL(nn.Module):
    """Text embedder 0: crossattn part only."""
    input_key = "txt"

    def __init__(self):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.transformer = TextLayers()

    def forward(self, texts):
        return _encode_chunks(self.wrapped.transformer, texts)


class ClipG(nn.Module):
    """Text embedder 1: crossattn part and a pooled vector (first chunk's first token through a projection
    that is a bare parameter, as OpenCLIP's `text_projection`: no network touches it, its input does)."""
    input_key = "txt"

    def __init__(self):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.model = nn.Module()
        self.wrapped.model.transformer = TextLayers()
        self.wrapped.model.text_projection = nn.Parameter(torch.randn(DIM, POOLED) / DIM ** 0.5)

    def forward(self, texts):
        hidden = _encode_chunks(self.wrapped.model.transformer, texts)
        return hidden, hidden[:, 0] @ self.wrapped.model.text_projection


class SizeEmbedder(nn.Module):
    input_key = "original_size_as_tuple"

    def forward(self, sizes):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(SIZE_FEATURES // 2) / (SIZE_FEATURES // 2))
        args = sizes.float()[:, :, None] * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=2).flatten(1)


class Conditioner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedders = nn.ModuleList([ClipL(), ClipG(), SizeEmbedder()])

    def forward(self, batch, zero_text_rows):
        out = {}
        for embedder in self.embedders:
            results = embedder(batch[embedder.input_key])
            for emb in results if isinstance(results, tuple) else (results,):
                if embedder.input_key == "txt":
                    emb = torch.where(zero_text_rows.reshape(-1, *[1] * (emb.dim() - 1)), 0.0, emb)
                key = {2: "vector", 3: "crossattn"}[emb.dim()]
                out[key] = torch.cat([out[key], emb], dim=-1) if key in out else emb
        return out


class TinyUNetXL(TinyUNet):
    """TinyUNet whose time embedding gets `label_emb(y)` added, y the pooled/size vector."""

    def __init__(self, channels=16, context_dim=CROSSATTN, adm_in_channels=VECTOR):
        super().__init__(channels=channels, context_dim=context_dim)
        self.label_emb = nn.Sequential(nn.Linear(adm_in_channels, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        assert y is not None and y.shape[0] == x.shape[0], "y must have one row per x row"
        emb = self.time_embed(self.timestep_embedding(timesteps)) + self.label_emb(y)
        h = self.res(self.conv_in(x), emb)
        h = self.attn(h, context)
        h = h + self.up(self.mid(self.down(h), context))
        return self.out(h)


class Wrapper(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x, t, c):
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"))


class TinySDXL(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conditioner = Conditioner()
        self.model = Wrapper(TinyUNetXL())
        self.model.conditioning_key = "crossattn"
        self.is_sdxl, self.is_sdxl_inpaint, self.lowvram, self.sd_checkpoint_info = True, False, False, None
        self.requires_grad_(False)
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])["crossattn"]

    @property
    def cond_stage_model(self):
        return self.conditioner

    def get_learned_conditioning(self, texts):
        height, width = getattr(texts, "height", None) or 1024, getattr(texts, "width", None) or 1024
        negative = bool(getattr(texts, "is_negative_prompt", False))
        batch = {"txt": list(texts), "original_size_as_tuple": torch.tensor([[height, width]] * len(texts))}
        return self.conditioner(batch, torch.tensor([negative and t == "" for t in texts]))

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)
