"""ω over the sampling steps: which ω the weak branch has at each step of a run.

The host tells PG, per CFG step, the fraction of the run done when the step begins (A1111:
`sampling_step / total_sampling_steps`); everything here is host-side float arithmetic, decided once per
step, never inside a layer hook.

* constant — ω at every step inside [start, end] (the behaviour before schedules existed);
* linear   — ω moves in a straight line from `omega` at `start` to `omega_end` at `end`, measured on
  the same fraction of the run as `start`/`end` (so the last step of a run ending at 1 is one step
  short of `omega_end`, as it is of `end`).

Outside [start, end] a step runs as plain CFG (ω = 1). A step whose ω is 1 is plain CFG too.
"""
from __future__ import annotations

import dataclasses

SCHEDULES = ("constant", "linear")


@dataclasses.dataclass(frozen=True)
class OmegaSchedule:
    """ω per step: `kind` in SCHEDULES; the PG range [start, end] as fractions of the steps."""

    kind: str = "constant"
    omega: float = 0.5
    omega_end: float = 0.5
    start: float = 0.0
    end: float = 1.0

    def in_range(self, fraction_done: float) -> bool:
        """Whether a step at `fraction_done` of the sampling run is inside [start, end]."""
        if self.end >= 1.0:
            return self.start <= fraction_done <= self.end
        return self.start <= fraction_done < self.end

    def omega_at(self, fraction_done: float) -> float:
        """ω of the weak branch at a step beginning at `fraction_done`; 1.0 (plain CFG) outside the range."""
        if not self.in_range(fraction_done):
            return 1.0
        if self.kind == "constant":
            return self.omega
        progress = min(max((fraction_done - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.omega + (self.omega_end - self.omega) * progress

    def lowest(self) -> float:
        """The smallest ω any step can get (1.0: PG never changes anything)."""
        return self.omega if self.kind == "constant" else min(self.omega, self.omega_end)

    def middle(self) -> float:
        """ω halfway through the range: what the text encoder's weak branch uses for a whole pass."""
        return self.omega_at(self.start + 0.5 * (self.end - self.start))
