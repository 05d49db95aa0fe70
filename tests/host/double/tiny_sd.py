"""The model the double serves as `shared.sd_model` (ours, not a host file): tests/unit/tiny_unet.py's
TinyUNet as `model.diffusion_model`, and a tiny text encoder as `cond_stage_model` whose `.wrapped.transformer`
holds the layers the Lora extension names (SD1 text-encoder layer names start with "transformer").

The encoder turns every WORDS words into one chunk of WORDS + 1 tokens and concatenates the chunks, as
A1111's CLIP wrapper does with 75-token chunks: longer prompts give longer conditioning, and a batch of
prompts is padded with empty chunks to the longest.
"""
import os
import sys
import zlib

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "unit"))
from tiny_unet import TinyUNet  # noqa: E402

WORDS = 6
DIM = 12


class TextLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, DIM)
        self.fc1, self.fc2, self.norm = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM), nn.LayerNorm(DIM)

    def forward(self, ids):
        h = self.embed(ids)
        return self.norm(h + self.fc2(torch.nn.functional.gelu(self.fc1(h))))


class TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.wrapped = nn.Module()
        self.wrapped.transformer = TextLayers()

    @staticmethod
    def chunks(text):
        ids = [2 + zlib.crc32(w.encode()) % 60 for w in text.lower().replace(",", " ").split()]
        return [[1] + (ids[i:i + WORDS] + [0] * WORDS)[:WORDS] for i in range(0, max(len(ids), 1), WORDS)]

    def forward(self, texts):
        per_text = [self.chunks(t) for t in texts]
        n = max(len(c) for c in per_text)
        empty = self.chunks("")[0]
        ids = torch.tensor([sum(c + [empty] * (n - len(c)), []) for c in per_text])
        return self.wrapped.transformer(ids)


class TinySD(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.cond_stage_model = TextEncoder()
        self.model = nn.Module()
        self.model.diffusion_model = TinyUNet(channels=16, context_dim=DIM)
        self.model.conditioning_key = "crossattn"
        self.lowvram = False
        self.sd_checkpoint_info = None
        self.requires_grad_(False)
        with torch.no_grad():  # the host encodes it once, when the model is loaded
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])

    def get_learned_conditioning(self, texts):
        return self.cond_stage_model(texts)

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, context=torch.cat(cond["c_crossattn"]))
