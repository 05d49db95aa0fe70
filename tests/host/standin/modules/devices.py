"""Stand-in for modules/devices.py (A1111 v1.10.1): CPU-only device/dtype globals and no-op helpers."""
import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = torch.device("cpu")
device_interrogate = device_gfpgan = device_esrgan = device_codeformer = cpu
fp8: bool = False
force_fp16: bool = False
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32
dtype_inference: torch.dtype = torch.float32
unet_needs_upcast = False


def get_optimal_device_name():
    """mirrors modules/devices.py:get_optimal_device_name (always 'cpu' here)."""
    return "cpu"


def get_optimal_device():
    """mirrors modules/devices.py:get_optimal_device."""
    return torch.device(get_optimal_device_name())


def torch_gc():
    """mirrors modules/devices.py:torch_gc (nothing to free on CPU)."""


def cond_cast_unet(input):
    """mirrors modules/devices.py:cond_cast_unet."""
    if force_fp16:
        return input.to(torch.float16)
    return input.to(dtype_unet) if unet_needs_upcast else input


def cond_cast_float(input):
    """mirrors modules/devices.py:cond_cast_float."""
    return input.float() if unet_needs_upcast else input


def autocast(disable=False):
    """mirrors modules/devices.py:autocast (float32 on CPU → a null context, like the host does for fp32)."""
    return contextlib.nullcontext()


def without_autocast(disable=False):
    """mirrors modules/devices.py:without_autocast."""
    return contextlib.nullcontext()


def test_for_nans(x, where):
    """mirrors modules/devices.py:test_for_nans (raises NansException on all-NaN output)."""
    if torch.isnan(x[(0,) * x.dim()]) and torch.all(torch.isnan(x)):
        raise NansException(f"A tensor with all NaNs was produced in {where}.")


class NansException(Exception):
    """mirrors modules/devices.py:NansException."""
