"""Personalization Guidance core: host-free (torch, safetensors and the standard library only).

The WebUI adapter lives in `scripts/personalization_guidance.py`; nothing here imports the WebUI.
"""
from .branch import ALL_ROWS, ParamDeltas, WeakBranch
from .config import FIELDS, Settings, SettingsError, request_pg
from .deltas import DenseDelta, LowRankDelta
from .guidance import personalization_guidance
from .router import UNetRowRouter

__all__ = ["ALL_ROWS", "FIELDS", "DenseDelta", "LowRankDelta", "ParamDeltas", "Settings", "SettingsError",
           "UNetRowRouter", "WeakBranch", "personalization_guidance", "request_pg"]
__version__ = "0.1.0"
