"""A tiny, real SD1-shaped model for the stand-in host (not a host file; layer names follow ldm/CLIP so Lora keys look like SD's).

Structure (names as in A1111 SD1 after the hijack):
  sd_model.model                      DiffusionWrapper (conditioning_key "crossattn")
  sd_model.model.diffusion_model      UNetModel: time_embed, input_blocks, middle_block, output_blocks, out
                                      with ResBlocks (GroupNorm/Conv2d/Linear) and SpatialTransformers
                                      (proj_in/proj_out Conv2d, attn1/attn2 with to_q/to_k/to_v/to_out.0, ff, norm1..3 LayerNorm)
  sd_model.cond_stage_model.wrapped.transformer.text_model.encoder.layers.0.{self_attn.q_proj,...,mlp.fc1,mlp.fc2}
Prompts are split into words; every chunk of WORDS_PER_CHUNK words becomes TOKENS_PER_CHUNK tokens
(BOS + words + EOS padding), chunks are encoded separately and concatenated like A1111's CLIP hijack,
so longer prompts give longer conds (token lengths can differ between cond and uncond).
"""
from __future__ import annotations

import contextlib
import math
import re
import zlib

import torch
from torch import nn
import torch.nn.functional as F

CONTEXT_DIM = 16
TOKENS_PER_CHUNK = 8
WORDS_PER_CHUNK = TOKENS_PER_CHUNK - 2
VOCAB = 97
MODEL_CHANNELS = 32
LATENT_CHANNELS = 4
GROUPS = 8


def tokenize(text):
    """Word ids (crc32 of each lower-cased word), stable across runs."""
    return [2 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in re.findall(r"[\w']+", text.lower())]


class _CLIPAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.out_proj(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v)


class _CLIPMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * 2)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _CLIPLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = _CLIPAttention(dim)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = _CLIPMLP(dim)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _TextModel(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(VOCAB, dim)
        self.embeddings.position_embedding = nn.Embedding(TOKENS_PER_CHUNK, dim)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([_CLIPLayer(dim)])
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, ids):
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight[None]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)


class StandinClipEmbedder(nn.Module):
    """Plays ldm's FrozenCLIPEmbedder: `.transformer.text_model`."""

    def __init__(self, dim=CONTEXT_DIM):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.text_model = _TextModel(dim)


class StandinCondStageModel(nn.Module):
    """Plays A1111's FrozenCLIPEmbedderWithCustomWords: `.wrapped`, called with a list of prompts → [N, T, D]."""

    def __init__(self, dim=CONTEXT_DIM):
        super().__init__()
        self.wrapped = StandinClipEmbedder(dim)

    def chunk_ids(self, text):
        words = tokenize(text)
        chunks = []
        for start in range(0, max(len(words), 1), WORDS_PER_CHUNK):
            part = words[start:start + WORDS_PER_CHUNK]
            chunks.append([0] + part + [1] * (TOKENS_PER_CHUNK - 1 - len(part)))
        return chunks

    def forward(self, texts):
        batch_chunks = [self.chunk_ids(t) for t in texts]
        count = max(len(c) for c in batch_chunks)
        empty = self.chunk_ids("")[0]
        outs = []
        for i in range(count):  # like sd_hijack_clip: chunk i of every prompt, empty chunks for shorter prompts
            ids = torch.tensor([c[i] if i < len(c) else empty for c in batch_chunks], dtype=torch.long)
            outs.append(self.wrapped.transformer.text_model(ids))
        return torch.hstack(outs)


class CrossAttention(nn.Module):
    """ldm.modules.attention.CrossAttention-shaped: to_q, to_k, to_v (no bias), to_out = [Linear, Dropout]."""

    def __init__(self, query_dim, context_dim=None, heads=2):
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, d = q.shape
        h = self.heads

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=2):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels, context_dim):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        return self.proj_out(x.transpose(1, 2).reshape(b, c, h, w)) + x_in


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(GROUPS, out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class UNetModel(nn.Module):
    """ldm.modules.diffusionmodules.openaimodel.UNetModel-shaped: forward(x, timesteps=None, context=None, y=None)."""

    def __init__(self, in_channels=LATENT_CHANNELS, model_channels=MODEL_CHANNELS, context_dim=CONTEXT_DIM):
        super().__init__()
        ch, emb = model_channels, model_channels * 2
        self.model_channels = model_channels
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1)),
            TimestepEmbedSequential(ResBlock(ch, emb), SpatialTransformer(ch, context_dim)),
        ])
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb), SpatialTransformer(ch, context_dim), ResBlock(ch, emb))
        self.output_blocks = nn.ModuleList([
            TimestepEmbedSequential(ResBlock(ch * 2, emb, ch), SpatialTransformer(ch, context_dim)),
        ])
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class DiffusionWrapper(nn.Module):
    """ldm.models.diffusion.ddpm.DiffusionWrapper (crossattn): forward(x, t, c_concat, c_crossattn) → diffusion_model(x, t, context=cat(c_crossattn, 1))."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat: list = None, c_crossattn: list = None, c_adm=None):
        cc = torch.cat(c_crossattn, 1)
        return self.diffusion_model(x, t, context=cc)


class StandinSdModel(nn.Module):
    """The `shared.sd_model` of the stand-in: ldm LatentDiffusion-like surface (apply_model, alphas_cumprod, get_learned_conditioning, ...)."""

    def __init__(self, seed=0, checkpoint_info=None):
        super().__init__()
        torch.manual_seed(seed)
        self.model = DiffusionWrapper(UNetModel())
        self.cond_stage_model = StandinCondStageModel()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float())
        self.parameterization = "eps"
        self.cond_stage_key = "txt"
        self.is_sdxl = False
        self.is_sd1 = True
        self.is_sd2 = False
        self.is_sd3 = False
        self.is_sdxl_inpaint = False
        self.latent_channels = LATENT_CHANNELS
        self.network_layer_mapping = {}
        self.lowvram = False
        self.used_config = "v1-inference.yaml"
        self.sd_checkpoint_info = checkpoint_info
        self.sd_model_hash = checkpoint_info.shorthash if checkpoint_info is not None else None
        self.sd_model_checkpoint = checkpoint_info.filename if checkpoint_info is not None else None
        for p in self.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.cond_stage_model([""])

    def get_learned_conditioning(self, c):
        """ldm LatentDiffusion.get_learned_conditioning for a list of prompts → [N, T, CONTEXT_DIM]."""
        return self.cond_stage_model(list(c))

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        """ldm LatentDiffusion.apply_model: wraps a non-dict cond as c_crossattn and calls self.model."""
        if not isinstance(cond, dict):
            cond = {'c_crossattn': cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    def decode_first_stage(self, z):
        """A fixed, cheap 'VAE': first 3 latent channels, tanh, upsampled x8 → [-1, 1] images."""
        return F.interpolate(torch.tanh(z[:, :3]), scale_factor=8, mode="nearest")

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield

    def checkpoint_state_dict(self):
        """Key layout of an SD1 checkpoint file: model.diffusion_model.*, cond_stage_model.transformer.*."""
        sd = {"model.diffusion_model." + k: v.clone() for k, v in self.model.diffusion_model.state_dict().items()}
        sd.update({"cond_stage_model." + k: v.clone() for k, v in self.cond_stage_model.wrapped.state_dict().items()})
        return sd

    def load_checkpoint_state_dict(self, sd):
        """Inverse of checkpoint_state_dict (strict=False like A1111)."""
        unet = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
        te = {k[len("cond_stage_model."):]: v for k, v in sd.items() if k.startswith("cond_stage_model.")}
        self.model.diffusion_model.load_state_dict(unet, strict=False)
        self.cond_stage_model.wrapped.load_state_dict(te, strict=False)
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.cond_stage_model([""])
