"""Device helpers PG uses: `autocast()` is a context manager (a no-op on CPU in fp32)."""
import contextlib

import torch

cpu = device = torch.device("cpu")
dtype = torch.float32


def autocast():
    return contextlib.nullcontext()
