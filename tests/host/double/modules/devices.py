"""Device helpers PG uses: `autocast()` is a context manager (a no-op on CPU in fp32)."""
import contextlib

import torch

cpu = device = torch.device("cpu")
dtype = dtype_unet = torch.float32  # A1111: devices.dtype_unet is the UNet compute dtype


def autocast():
    return contextlib.nullcontext()
