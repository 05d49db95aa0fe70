"""Personalization Guidance core: host-free (torch, safetensors and the standard library only).

The WebUI entry script is `scripts/personalization_guidance.py` and the per-host adapters are in
`pg_hosts/`; nothing here imports the WebUI.
The package itself imports only the standard library (`config`): the torch parts load on first use, so
the extension's `preload.py` can register the package at WebUI start at no cost, and other extensions
can `from pg_ext import request_pg` whatever order the WebUI loads extensions in.
"""
import importlib

from .config import FIELDS, Settings, SettingsError, request_pg

_LAZY = {"ALL_ROWS": "branch", "ParamDeltas": "branch", "WeakBranch": "branch", "DenseDelta": "deltas",
         "LowRankDelta": "deltas", "UNetRowRouter": "router"}

__all__ = ["FIELDS", "Settings", "SettingsError", "request_pg", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
