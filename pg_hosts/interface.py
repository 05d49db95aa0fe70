"""What every host adapter implements: the one interface the entry script asks of `pg_hosts.<host>`.

An adapter is a module, picked once at load time (`pg_hosts.load`); this Protocol states its members,
and `tests/unit/test_adapter_interface.py` checks that every adapter has each of them with these
parameters. The script uses nothing else of an adapter.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from torch import nn


class HostAdapter(Protocol):
    NAME: str                       # the host's name in logs and notes
    SUPPORTS_BASE_CHECKPOINT: bool  # whether base-checkpoint (DreamBooth) mode is built for this host

    def unet(self, sd_model: Any) -> nn.Module:
        """The module every UNet call of a pass goes through."""

    def loaded_networks(self) -> list:
        """The Lora extension's networks loaded for the current job (prompt order)."""

    def original_param(self, module: nn.Module, name: str) -> Any:
        """A UNet parameter without any LoRA merged in (base-checkpoint mode reads differences against it)."""

    def moves_blocks_per_call(self, sd_model: Any) -> bool:
        """Whether the host streams the UNet to the device per call: PG then keeps no device copies."""

    def scheduling_args(self) -> tuple:
        """What the host's get_learned_conditioning / cached_params take after (steps, hires_steps)."""

    def replacement_unet_active(self) -> bool:
        """Whether a replacement UNet (TensorRT) runs instead of the torch module."""

    def weak_uncond(self, weak: Any, host_uncond: Any) -> Any:
        """The weak conditioning shaped like the host's uncond (markers other extensions put on it)."""

    def begin_pass(self, p: Any, session: Any, encode_weak: Callable[[], Any],
                   extra_unet_deltas: dict) -> Optional[Any]:
        """Hook this pass's UNet through `session.begin_pass`; None: the pass runs as plain CFG."""


MEMBERS = ("NAME", "SUPPORTS_BASE_CHECKPOINT", "unet", "loaded_networks", "original_param", "moves_blocks_per_call",
           "scheduling_args", "replacement_unet_active", "weak_uncond", "begin_pass")
