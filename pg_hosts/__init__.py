"""Host adapters: the few things that differ between A1111 and its forks, one small module per host.

The entry script (`scripts/personalization_guidance.py`) keeps the UI, arguments, infotext, X/Y/Z and
`request_pg`, identical in every host; `pg_ext` keeps the math and never imports a host. An adapter
answers what differs: which UNet module the rows go through, how the weak rows of one UNet call are
found, where the LoRA differences come from, and where PG attaches and detaches.

The host is found once, by which of its top-level packages can be found (`find_spec` only: nothing
of the host is imported here, so `preload.py` can register this package before the host starts):

    reForge   ldm_patched + modules_forge, whose ldm_patched/modules/lora.py has the module-level
              `calculate_weight` PG merges with (a port of ComfyUI's model patcher; gradio 3.41)
    Forge Classic / Forge 1   ldm_patched + modules_forge without it (merge is a patcher method, backups
              are bare tensors): not supported; loading the entry script fails with a message naming it
    Neo       backend + modules_forge, whose forge_version.py says version "neo" (gradio 4)
    Forge     backend + modules_forge, any other version (Forge 2, gradio 4)
    A1111     neither

Forge Neo keeps Forge 2's `backend/` layout but ComfyUI's model patcher: the version file, read as text
(never imported), is what tells them apart.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re

A1111, REFORGE, FORGE, FORGE_NEO = "a1111", "reforge", "forge", "forge_neo"
SUPPORTED = (A1111, REFORGE, FORGE, FORGE_NEO)
FORGE_CLASSIC, FORGE_1 = "forge_classic", "forge_1"
UNSUPPORTED = {
    FORGE_CLASSIC: "Forge Classic (Haoming02/sd-webui-forge-classic, modules_forge/forge_version.py: 'classic')",
    FORGE_1: "Forge 1 (lllyasviel/stable-diffusion-webui-forge before its backend/ rewrite)",
}
_MODULE_MERGE = re.compile(r"^def calculate_weight\(", re.MULTILINE)


class UnsupportedHost(RuntimeError):
    """The running WebUI is one PG has no adapter for; the message names it."""
_VERSION = re.compile(r"""^version\s*=\s*["']([^"']*)["']""", re.MULTILINE)


def _has(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-registered package is as good as absent
        return False


def forge_version() -> str:
    """`version` in modules_forge/forge_version.py, read as text; "" when there is none."""
    try:
        spec = importlib.util.find_spec("modules_forge")
    except (ImportError, ValueError):
        return ""
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            with open(os.path.join(folder, "forge_version.py"), encoding="utf-8") as f:
                found = _VERSION.search(f.read())
        except OSError:
            continue
        if found:
            return found.group(1)
    return ""


def _reforge_merge() -> bool:
    """Whether ldm_patched/modules/lora.py defines the module-level merge reForge's adapter uses (as text)."""
    try:
        spec = importlib.util.find_spec("ldm_patched")
    except (ImportError, ValueError):
        return False
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            with open(os.path.join(folder, "modules", "lora.py"), encoding="utf-8") as f:
                if _MODULE_MERGE.search(f.read()):
                    return True
        except OSError:
            continue
    return False


def detect() -> str:
    """The name of the running host, from the packages it ships (no import, no side effect)."""
    if _has("modules_forge"):
        if _has("ldm_patched"):
            if _reforge_merge():
                return REFORGE
            return FORGE_CLASSIC if forge_version().strip().lower() == "classic" else FORGE_1
        if _has("backend"):
            return FORGE_NEO if forge_version().strip().lower() == "neo" else FORGE
    return A1111


def load(name: str):
    """The adapter module of host `name`; UnsupportedHost naming a host PG knows it cannot serve."""
    if name in UNSUPPORTED:
        raise UnsupportedHost(f"Personalization Guidance does not support {UNSUPPORTED[name]} yet: its model "
                              "patcher keeps LoRAs in a layout PG cannot read exactly, so PG is not loaded "
                              "(supported: AUTOMATIC1111 1.10, reForge, Forge 2, Forge Neo)")
    if name not in SUPPORTED:
        raise ValueError(f"unknown host {name!r} (known: {', '.join(SUPPORTED)})")
    return importlib.import_module(f"{__name__}.{name}")
