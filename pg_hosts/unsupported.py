"""A host PG has no adapter for yet (Forge 2): the script loads, the UI, API and infotext work, and
every pass runs as plain CFG with a `PG note` saying why, instead of failing at import."""
from __future__ import annotations

import sys

SUPPORTS_BASE_CHECKPOINT = False


class Unsupported:
    def __init__(self, name: str):
        self.NAME = name
        self.SUPPORTS_BASE_CHECKPOINT = SUPPORTS_BASE_CHECKPOINT

    def unet(self, sd_model):
        return None

    def loaded_networks(self) -> list:
        networks = sys.modules.get("networks")
        return list(getattr(networks, "loaded_networks", []) or [])

    def original_param(self, module, name: str):
        return getattr(module, name)

    def moves_blocks_per_call(self, sd_model) -> bool:
        return False

    def replacement_unet_active(self) -> bool:
        return False

    def begin_pass(self, p, session, encode_weak, extra_unet_deltas):
        raise NotImplementedError(f"this WebUI ({self.NAME}) is not supported yet: plain CFG")

    def weak_uncond(self, weak, host_uncond):
        return host_uncond
