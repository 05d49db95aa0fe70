"""CFG, Personalization Guidance and autoguidance on the miniature model, all through pg_ext.

Every step is ONE batched UNet call on [cond rows; weak rows], like the WebUI: pg_ext's
`UNetRowRouter` flags the weak rows from the call's `context`, and its `WeakBranch` hooks give those
rows θ_ω = θ' − (1 − ω)·D layer by layer, D = θ' − θ.

* CFG: weak rows = θ' on the empty prompt (no hooks).
* PG (Park et al. 2025): weak rows = θ_ω on the empty prompt.
* AG (Karras et al. 2024, as the PG paper compares it): weak rows = a bad version of the model on the
  SAME prompt; the bad version is θ_ω with a small ω (ω = 0: the un-personalized base).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.checkpoint import checkpoint_deltas
from pg_ext.router import UNetRowRouter
from pg_ext.schedule import OmegaSchedule, ramp_down

from . import data
from .diffusion import ddim_sample
from .io import load_base, load_finetune, weights_path
from .lora import load_lora, merged
from .model import TextEncoder, UNet

MODELS = ("ft", "ft_noprior", "lora", "lora_noprior")


@dataclasses.dataclass
class Personalized:
    """θ (base), θ' (tuned), the frozen text encoder, and D per layer of θ' for pg_ext."""

    name: str
    base: UNet
    tuned: UNet
    text: TextEncoder
    deltas: dict
    dense: bool  # full fine-tune: pg_ext's exact-weights path; LoRA: the additive low-rank path


@dataclasses.dataclass(frozen=True)
class Guidance:
    """One guidance setting: kind 'cfg' | 'pg' | 'ag', scale s, ω of the weak/bad weights and its schedule.

    `omega_end` given: ω moves linearly to it over [start, end] (pg_ext.schedule 'linear'); outside
    [start, end] a step is plain CFG, as in the WebUI. `auto`: pg_ext.schedule's 'auto' (ω and omega_end
    unused). `ramp` (begin, finish): a candidate for 'auto' measured before choosing it, ω = 1 before
    `begin`, 0 from `finish`, linear in between (pg_ext.schedule.ramp_down).
    """

    kind: str
    scale: float
    omega: float = 1.0
    omega_end: Optional[float] = None
    start: float = 0.0
    end: float = 1.0
    auto: bool = False
    ramp: Optional[tuple] = None

    @property
    def schedule(self):
        if self.auto:
            return OmegaSchedule("auto", self.omega, self.omega, self.start, self.end)
        if self.ramp is not None:
            return _Ramp(*self.ramp)
        if self.omega_end is None:
            return OmegaSchedule("constant", self.omega, self.omega, self.start, self.end)
        return OmegaSchedule("linear", self.omega, self.omega_end, self.start, self.end)

    @property
    def scheduled(self) -> bool:
        """Whether ω changes over the steps (a ramp or a band of the steps)."""
        return (self.omega_end is not None or (self.start, self.end) != (0.0, 1.0) or self.auto
                or self.ramp is not None)

    @property
    def label(self) -> str:
        if self.kind == "cfg":
            return f"CFG s={self.scale:g}"
        if self.auto:
            return f"{self.kind.upper()} auto s={self.scale:g}"
        if self.ramp is not None:
            return f"{self.kind.upper()} ramp {self.ramp[0]:g}-{self.ramp[1]:g} s={self.scale:g}"
        omega = f"{self.omega:g}" if self.omega_end is None else f"{self.omega:g}>{self.omega_end:g}"
        band = "" if (self.start, self.end) == (0.0, 1.0) else f" [{self.start:g},{self.end:g}]"
        return f"{self.kind.upper()} w={omega}{band} s={self.scale:g}"


@dataclasses.dataclass(frozen=True)
class _Ramp:
    """A candidate 'auto' rule: ω = ramp_down(fraction done, begin, finish) over the whole run."""

    begin: float
    finish: float

    def omega_at(self, fraction_done: float) -> float:
        return ramp_down(fraction_done, self.begin, self.finish)

    def lowest(self) -> float:
        return 0.0


def load_personalized(name: str, base: Optional[tuple] = None) -> Personalized:
    """One shipped personalization ('ft', 'ft_noprior', 'lora', 'lora_noprior') with its deltas."""
    unet, text = base or load_base()
    if name.startswith("ft"):
        tuned = load_finetune(unet, weights_path(name)).eval().requires_grad_(False)
        deltas = checkpoint_deltas(tuned, unet.state_dict()).deltas
        return Personalized(name, unet, tuned, text, deltas, dense=True)
    lora = load_lora(weights_path(name))
    tuned = merged(unet, lora).eval().requires_grad_(False)
    deltas = {tuned.get_submodule(layer): [d] for layer, d in lora.items()}
    return Personalized(name, unet, tuned, text, deltas, dense=False)


@torch.no_grad()
def encode(text: TextEncoder, prompts: Sequence[str]) -> torch.Tensor:
    """Context [N, T, 64] of the prompts."""
    return text(torch.stack([data.tokenize(p) for p in prompts]))


def _router(model: Personalized, g: Guidance) -> Optional[UNetRowRouter]:
    if g.kind == "cfg":
        return None
    branch = WeakBranch(g.schedule.lowest(), model.deltas, exact_weights=model.dense)
    return UNetRowRouter(model.tuned, branch)


@torch.no_grad()
def sample(model: Personalized, prompts: Sequence[str], g: Guidance, seed: int = 0, steps: int = 16,
           progress: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Images [N, 3, 32, 32] in [-1, 1] for the prompts under guidance g, one batched call per step."""
    n = len(prompts)
    cond = encode(model.text, prompts)
    uncond = cond if g.kind == "ag" else encode(model.text, [""]).expand(n, -1, -1)
    context = torch.cat([cond, uncond])
    noise = torch.randn((n, 3, data.SIZE, data.SIZE), generator=torch.Generator().manual_seed(seed))
    router = _router(model, g)
    schedule, step = g.schedule, iter(range(steps))

    def predict_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if router is not None:  # as the WebUI's on_cfg_denoiser: this step's ω from the fraction done
            omega = schedule.omega_at(next(step) / steps)
            if omega < 1.0:
                router.branch.set_omega(omega)
                router.begin_step(cond, uncond)
            else:  # plain CFG step: the weak rows are θ' on the weak prompt
                router.begin_step(None, None)
        out = model.tuned(torch.cat([x, x]), torch.cat([t, t]), context=context)
        v_cond, v_weak = out[:n], out[n:]
        return v_weak + g.scale * (v_cond - v_weak)

    with router if router is not None else contextlib.nullcontext():
        return ddim_sample(predict_v, noise, steps, progress)


def weak_model(model: Personalized, omega: float) -> nn.Module:
    """θ_ω materialized with torch.lerp on every parameter (the two-model reference of the tests)."""
    import copy

    weak = copy.deepcopy(model.tuned)
    base = dict(model.base.named_parameters())
    with torch.no_grad():
        for name, p in weak.named_parameters():
            p.copy_(torch.lerp(base[name], p, omega))
    return weak
