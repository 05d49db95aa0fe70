"""One generation job with PG: prepare each sampling pass, route each CFG step, always clean up.

Host-neutral: the adapter hands in the UNet module, the text encoder's layers, the Lora extension's
loaded networks and a function that encodes prompts; this object never reaches for the host itself.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from .branch import ALL_ROWS, ParamDeltas, WeakBranch
from .config import Settings, SettingsError
from .deltas import LayerDelta
from .selection import select_networks
from .router import UNetRowRouter

log = logging.getLogger("personalization_guidance")

Deltas = Mapping[nn.Module, Sequence[LayerDelta] | ParamDeltas]


@dataclasses.dataclass
class PassPlan:
    """What one sampling pass will do: which networks, how many layers, whether the text side changes."""

    networks: list[str]
    unet_layers: int
    text_layers: int
    weak_conditioning: Any = None  # host conditioning for the weak rows, or None = the host's uncond


def merge_deltas(*groups: Deltas) -> dict[nn.Module, list[LayerDelta] | ParamDeltas]:
    """Layer -> all differences of that layer from several sources (LoRAs, base checkpoint)."""
    out: dict[nn.Module, list] = {}
    for group in groups:
        for layer, deltas in group.items():
            if isinstance(deltas, ParamDeltas):
                out[layer] = deltas
            else:
                out.setdefault(layer, []).extend(deltas)
    return out


class GuidanceSession:
    """PG state of one job; attach it to the processing object and close it in `finally`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.router: Optional[UNetRowRouter] = None
        self.plan: Optional[PassPlan] = None
        # what the adapter computes once per job (e.g. base-checkpoint differences keyed by the loaded model)
        self.prepared: dict[Any, Any] = {}
        self._routed = 0  # finished passes' counts; see steps_routed / steps_missed / steps_mixed
        self._missed = 0
        self._mixed = 0
        self._undo: list[Callable[[], None]] = []  # what an adapter changed on the host for this pass

    def undo_at_end_of_pass(self, undo: Callable[[], None]) -> None:
        """Run `undo` when this pass ends (normally, on an error or interrupt, or when the next pass begins)."""
        self._undo.append(undo)

    @property
    def steps_routed(self) -> int:
        """Active CFG steps of this job (all passes so far) in whose UNet calls weak rows were found."""
        if self.router is None:
            return self._routed
        return self._routed + self.router.steps_routed + self.router.pending()[0]

    @property
    def steps_missed(self) -> int:
        """Active CFG steps of this job whose uncond rows reached the UNet but none was identified as weak.

        Such a step ran as plain CFG (an extension rewrote the conditioning, an uneven batch, ...).
        """
        if self.router is None:
            return self._missed
        return self._missed + self.router.steps_missed + self.router.pending()[1]

    @property
    def steps_mixed(self) -> int:
        """Of the missed steps, those whose uncond the host had already replaced by the weak conditioning
        (`step(uncond_is_weak=True)`): θ' on θ_ω's text, neither PG nor plain CFG."""
        if self.router is None:
            return self._mixed
        return self._mixed + self.router.steps_mixed + self.router.pending_mixed()

    def places_weak_conditioning(self, weak: torch.Tensor, uncond: torch.Tensor) -> bool:
        """Whether this pass's router puts `weak` into the weak rows itself (`step(weak_context=...)`), so
        that the host's uncond stays the host's and a step whose rows are not found is plain CFG."""
        return self.router is not None and self.router.can_place(weak, uncond)

    def select(self, loaded_networks: Sequence[Any]) -> list[Any]:
        """The personalization networks among the loaded ones; unknown names are an input error."""
        selected, unknown = select_networks(loaded_networks, self.settings.loras)
        if unknown:
            loaded = ", ".join(sorted(getattr(n, "name", "?") for n in loaded_networks)) or "none"
            raise SettingsError("loras", ", ".join(unknown), f"must name LoRAs used in the prompt (loaded: {loaded})")
        return selected

    def begin_pass(self, unet: nn.Module, unet_deltas: Deltas, text_deltas: Deltas, networks: Sequence[str],
                   encode_weak: Optional[Callable[[], Any]], exact_weights: bool = True,
                   empty_prompt: bool = False, keep_on_device: bool = True,
                   router: Callable[[nn.Module, WeakBranch], UNetRowRouter] = UNetRowRouter
                   ) -> Optional[PassPlan]:
        """Prepare a sampling pass with the differences each adapter takes from its host; None: this pass
        runs as plain CFG (nothing to act on).

        `encode_weak()` encodes the weak branch's prompts with the host's text encoder; it is called with
        the text-encoder hooks active when a selected network touches the text encoder, or when the weak
        branch uses the empty prompt.

        `router(unet, branch)` makes the object that flags each call's weak rows: by conditioning
        (`UNetRowRouter`, A1111) or by the host's own marks (`MarkedRowRouter`).
        """
        self.end_pass()
        if not unet_deltas and not text_deltas and not empty_prompt:
            return None
        weak_conditioning = None
        if encode_weak is not None and (text_deltas or empty_prompt):
            weak_conditioning = self._encode(encode_weak, text_deltas)
        # built at the schedule's lowest ω so its hooks attach; `step` sets each step's own ω
        branch = WeakBranch(self.settings.omega_schedule.lowest(), unet_deltas, exact_weights, keep_on_device)
        self.router = router(unet, branch).attach()
        self.plan = PassPlan(list(networks), len(unet_deltas), len(text_deltas), weak_conditioning)
        return self.plan

    def _encode(self, encode_weak: Callable[[], Any], text_deltas: Deltas) -> Any:
        # Once per pass, like CFG's own uncond: a schedule's text side uses its ω halfway through the range
        # (exact for 'constant'; re-encoding per step would cost a text-encoder pass per step).
        with WeakBranch(self.settings.omega_schedule.middle(), text_deltas) as branch:
            branch.mask = ALL_ROWS
            return encode_weak()

    def step(self, active: bool, cond: Optional[torch.Tensor], uncond: Optional[torch.Tensor],
             omega: Optional[float] = None, weak_context: Optional[torch.Tensor] = None,
             weak_y: Optional[torch.Tensor] = None, uncond_is_weak: bool = False) -> None:
        """Route one CFG step at `omega` (None: the settings' ω); an inactive step runs as plain CFG.

        The host decides `active` and `omega` once per step from its step counter
        (`Settings.in_range`, `Settings.omega_at`); a step at ω = 1 is plain CFG. `weak_context`/`weak_y`:
        the weak conditioning for the router to put into the weak rows (see `places_weak_conditioning`);
        `uncond_is_weak`: the caller already put it into the host's uncond instead.
        """
        if self.router is None:
            return
        omega = self.settings.omega if omega is None else omega
        active = active and omega < 1.0
        if active:
            self.router.branch.set_omega(omega)
        if not active:
            self.router.begin_step(None, None)
            return
        self.router.begin_step(cond, uncond, weak_context, weak_y, uncond_is_weak)

    @property
    def unet(self) -> Optional[nn.Module]:
        """The UNet this pass is hooked on (None between passes)."""
        return None if self.router is None else self.router.unet

    def end_pass(self) -> None:
        """Remove every hook of the current pass and undo the adapter's changes (idempotent)."""
        if self.router is not None:
            self.router.detach()
            self._routed += self.router.steps_routed
            self._missed += self.router.steps_missed
            self._mixed += self.router.steps_mixed
        self.router = None
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # runs in `finally` paths: log, never hide the error that brought us here
                log.exception("PG: undoing a host change at the end of the pass failed")

    def close(self) -> None:
        """End of a batch's sampling: nothing of PG stays on the model."""
        self.end_pass()
        self.plan = None

    def end_job(self) -> None:
        """End of the job: also drop what was prepared for it (the memory is freed now, not at GC)."""
        self.close()
        self.prepared.clear()
        self._routed = self._missed = self._mixed = 0
