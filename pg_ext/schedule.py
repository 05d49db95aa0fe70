"""ω over the sampling steps: which ω the weak branch has at each step of a run.

The host tells PG, per CFG step, the fraction of the run done when the step begins (A1111:
`sampling_step / total_sampling_steps`); everything here is host-side float arithmetic, decided once per
step, never inside a layer hook.

* constant — ω at every step inside [start, end] (the behaviour before schedules existed);
* linear   — ω moves in a straight line from `omega` at `start` to `omega_end` at `end`, measured on
  the same fraction of the run as `start`/`end` (so the last step of a run ending at 1 is one step
  short of `omega_end`, as it is of `end`).
* auto     — no ω to choose (`omega` and `omega_end` are ignored): plain CFG while the layout forms,
  ω = 0 (the weak branch is the base: all of the subject unlearned) while the details form. A step
  whose run is less than `AUTO_FROM` done has ω = 1, from `AUTO_TO` on ω = 0, linearly in between
  (`ramp_down`). Why: on the miniature (docs/miniature.md, "ω over the steps"), PG's text cost arises
  in the first half of the steps and its subject gain in the second; ω = 0 only in the late half beat
  every constant ω on both personalizations and both subject metrics. The subject-vs-text trade-off is
  then set by the CFG scale alone, as without PG. `AUTO_FROM`/`AUTO_TO` are the measured choice.
  On the miniature's cosine schedule, half the steps is where the noise level σ = 1 (SNR 1).

Outside [start, end] a step runs as plain CFG (ω = 1), for every kind. A step whose ω is 1 is plain CFG too.
"""
from __future__ import annotations

import dataclasses

SCHEDULES = ("constant", "linear", "auto")

AUTO_FROM = 0.5  # auto: ω = 1 (plain CFG) for steps that begin before this fraction of the run ...
AUTO_TO = 0.5    # ... ω = 0 from this fraction on; linear in between (equal: a step)


def ramp_down(fraction_done: float, begin: float, finish: float) -> float:
    """1 before `begin`, 0 from `finish` on, linear in between; `begin == finish` is a step at `begin`."""
    if fraction_done >= finish:
        return 0.0
    if fraction_done < begin:
        return 1.0
    return (finish - fraction_done) / (finish - begin)


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
        if self.kind == "auto":
            return ramp_down(fraction_done, AUTO_FROM, AUTO_TO)
        progress = min(max((fraction_done - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.omega + (self.omega_end - self.omega) * progress

    def lowest(self) -> float:
        """The smallest ω any step can get (1.0: PG never changes anything)."""
        if self.kind == "auto":  # ω never rises over a run: the lowest is at the range's last step
            return ramp_down(self.end if self.end >= 1.0 else self.end - 1e-9, AUTO_FROM, AUTO_TO)
        return self.omega if self.kind == "constant" else min(self.omega, self.omega_end)

    def middle(self) -> float:
        """ω halfway through the range: what the text encoder's weak branch uses for a whole pass."""
        return self.omega_at(self.start + 0.5 * (self.end - self.start))

