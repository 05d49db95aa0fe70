"""KModel.apply_model: the call's transformer_options reach the UNet module as a keyword."""
from torch import nn


class KModel(nn.Module):
    def __init__(self, diffusion_model, chunks_per_call=None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.chunks_per_call = chunks_per_call  # None: every chunk fits (the double's free-memory check)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return self.diffusion_model(x, t, context=c_crossattn, control=control, transformer_options=transformer_options)
