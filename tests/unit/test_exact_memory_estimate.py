"""What exact base mode is estimated to need, against what is free (pg_ext.checkpoint.exact_mode_shortfall)."""
import torch
from torch import nn

from pg_ext import checkpoint


def _unet():
    return nn.Sequential(nn.Linear(256, 256), nn.Conv2d(4, 8, 3))  # 65,792 + 296 parameters, fp32


def test_needs_differences_plus_weak_weights_on_the_cpu(monkeypatch):
    unet = _unet()
    params = sum(p.numel() for p in unet.parameters())
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: 8 * params - 1)
    short = checkpoint.exact_mode_shortfall(unet, torch.device("cpu"), torch.float32, read_base=True,
                                            keep_on_device=True)
    assert short is not None and "RAM" in short  # 4 bytes stored + 4 bytes θ_ω per parameter
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: 8 * params)
    assert checkpoint.exact_mode_shortfall(unet, torch.device("cpu"), torch.float32, True, True) is None


def test_cached_differences_and_lowvram_need_less(monkeypatch):
    unet = _unet()
    params = sum(p.numel() for p in unet.parameters())
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: 4 * params)
    assert checkpoint.exact_mode_shortfall(unet, torch.device("cpu"), torch.float32, read_base=False,
                                           keep_on_device=True) is None
    assert checkpoint.exact_mode_shortfall(unet, torch.device("cpu"), torch.float32, read_base=True,
                                           keep_on_device=False) is None


def test_unknown_free_memory_never_refuses(monkeypatch):
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: None)
    assert checkpoint.exact_mode_shortfall(_unet(), torch.device("cpu"), torch.float16, True, True) is None


def test_reads_the_os_figure():
    free = checkpoint.free_host_memory()
    assert free is None or free > 0
