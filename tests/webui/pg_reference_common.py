"""The face shared by the two "PG reference" scripts (tests only): tests/webui/reference_ext (A1111) and
tests/webui/hosts/reference_ext (the forks). Both take the same API arguments, so the live suite drives either
the same way: [enabled, omega, weak_prompt ("negative"|"empty"), base_checkpoint ("None" or a checkpoint name),
loras (comma-separated names to weaken; empty = every LoRA of the prompt), schedule (optional: "" = ω at every
step; "auto"; or "KIND:OMEGA_END:START:END" with KIND constant|linear: ω over the steps, see `step_omegas`)].

Imported as a module (`import pg_reference_common as common`), never `from ... import`: the WebUI registers every
Script subclass it finds in a script file's namespace, and the base class must not become a script of its own.
"""
from __future__ import annotations

from modules import prompt_parser, scripts

TITLE = "PG reference"
STATE_ATTR = "pg_reference_state"  # the job's reference state on the processing object; it counts `calls`


def weak_prompts(p, weak_prompt: str):
    """The prompts of the weak conditioning: the job's negative prompts, or as many empty ones."""
    prompts = [""] * len(p.negative_prompts) if weak_prompt == "empty" else list(p.negative_prompts)
    return prompt_parser.SdConditioning(prompts, width=p.width, height=p.height, is_negative_prompt=True)


def step_omegas(schedule: str, omega: float):
    """(ω of a step from the fraction of the run done when it begins, ω of the text encoder's weak conditioning).

    Written here from the README's words, not imported from pg_ext: "auto" = plain CFG (ω = 1) for steps
    that begin before half the run, ω = 0 from half on; "linear" = ω in a straight line from `omega` at START
    to OMEGA_END at END; "constant" = `omega`; outside [START, END] (END itself included only when it is 1)
    ω = 1. The text encoder's weak prompt is encoded once, at the ω halfway through [START, END]."""
    schedule = str(schedule or "").strip()
    if not schedule:
        return (lambda fraction: omega), omega
    kind, *rest = schedule.split(":")
    omega_end, start, end = (float(v) for v in rest) if rest else (omega, 0.0, 1.0)

    def at(fraction: float) -> float:
        inside = start <= fraction <= end if end >= 1.0 else start <= fraction < end
        if not inside:
            return 1.0
        if kind == "auto":
            return 0.0 if fraction >= 0.5 else 1.0
        if kind == "linear":
            return omega + (omega_end - omega) * min(max((fraction - start) / (end - start), 0.0), 1.0)
        if kind == "constant":
            return omega
        raise ValueError(f"PG reference: unknown schedule {schedule!r}")

    return at, at(start + (end - start) / 2)


class ReferenceScript(scripts.Script):
    """Parses the arguments; a host's reference implements `start(p, omega, weak_prompt, base, loras)` (sets
    the job's state as p.<STATE_ATTR>), `first_pass(p, state)` (before the first pass samples) and `stop()`
    (called first in every job, so that a job without the reference leaves nothing active)."""

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr  # hidden inputs: the API slices args by the number of components

        return [gr.Checkbox(False, visible=False), gr.Number(1.0, visible=False), gr.Textbox("negative", visible=False),
                gr.Textbox("None", visible=False), gr.Textbox("", visible=False), gr.Textbox("", visible=False)]

    def process(self, p, enabled=False, omega=1.0, weak_prompt="negative", base_checkpoint="None", loras="",
                schedule="", *rest):
        self.stop()
        if not enabled:
            return
        base = str(base_checkpoint) if base_checkpoint and str(base_checkpoint) != "None" else None
        names = {n.strip() for n in str(loras or "").split(",") if n.strip()}
        self.start(p, float(omega), str(weak_prompt), base, names)
        state = getattr(p, STATE_ATTR)
        state.omega_at, state.text_omega = step_omegas(schedule, float(omega))
        state.schedule = str(schedule or "")
        p.extra_generation_params[TITLE] = (f"omega {float(omega):g}, {weak_prompt}, base {base_checkpoint}"
                                            + (f", schedule {schedule}" if schedule else ""))

    def process_before_every_sampling(self, p, *args, **kwargs):
        state = getattr(p, STATE_ATTR, None)
        if state is None:
            return
        if getattr(p, "is_hr_pass", False):
            self.stop()  # first pass only
            return
        self.first_pass(p, state)

    def postprocess(self, p, processed, *args):
        state = getattr(p, STATE_ATTR, None)
        if state is not None:
            print(f"{TITLE}: {state.calls} weak re-runs")
        self.stop()

    def start(self, p, omega: float, weak_prompt: str, base, loras: set) -> None:
        raise NotImplementedError

    def first_pass(self, p, state) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
