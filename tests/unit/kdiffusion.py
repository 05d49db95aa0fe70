"""Import the real k-diffusion (the WebUI's sampler library) without its vision/training extras.

k-diffusion's package __init__ imports its evaluation and training helpers, which need torchvision,
CLIP and clean-fid at import time; the samplers and the CompVis wrappers never use them. PyPI's
torchvision wheels need a CUDA torch, so the tests register empty placeholders for exactly those
modules (only when they are not installed) and import the real package.
"""
import importlib
import sys
import types

_EXTRAS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "clip",
           "cleanfid", "cleanfid.inception_torchscript")


def load():
    """The real `k_diffusion` package."""
    for name in _EXTRAS:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:
            placeholder = types.ModuleType(name)
            placeholder.InceptionV3W = placeholder.transforms = placeholder.functional = None
            sys.modules[name] = placeholder
    return importlib.import_module("k_diffusion")
