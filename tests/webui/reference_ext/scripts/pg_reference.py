"""PG reference (tests only): the weak branch of Personalization Guidance computed the slow, obvious way.

Each step, after the host's batched UNet call, the uncond rows (the last B rows of the call, B = the
batch size) are run AGAIN through the k-diffusion wrapper with the weak model θ_ω materialized:

* LoRA: every selected loaded network's `unet_multiplier` is set to ω × its value; the Lora extension
  re-merges the weights on the next forward; the multipliers are restored in `finally` (the next
  forward re-merges the original weights).
* Base checkpoint: every UNet parameter becomes torch.lerp(base, current, ω) for the call (in place) and
  gets its exact old values back in `finally`.

The weak conditioning (negative or empty prompt) is encoded once per pass with the selected networks'
`te_multiplier` scaled by ω, and substituted for the host's uncond in on_cfg_denoiser.

ω over the steps (the optional 6th argument, pg_reference_common.step_omegas): each step's ω comes from the
host's step counter (`sampling_step / total_sampling_steps`) in on_cfg_denoiser; a step at ω = 1 is left to
the host (its own uncond, no re-run), any other step is re-run at that ω as above; the weak conditioning is
encoded at the ω halfway through the schedule's range.

API args: [enabled, omega, weak_prompt ("negative"|"empty"), base_checkpoint ("None" or a checkpoint
name), loras (comma-separated names to weaken; empty = every loaded network)].
"""
from __future__ import annotations

import os
import sys

import torch

from modules import devices, prompt_parser, script_callbacks, sd_models, shared

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))  # tests/webui
import pg_reference_common as common  # noqa: E402 (a module, not its class: see its docstring)

STATE_ATTR = common.STATE_ATTR
_active = {"state": None}  # the running job's state; jobs run one at a time in the WebUI


class _State:
    def __init__(self, omega: float, weak_prompt: str, base_file: str | None, loras: set[str]):
        self.omega, self.weak_prompt, self.base_file, self.loras = omega, weak_prompt, base_file, loras
        self.weak_uc = None      # prompt schedules of the weak conditioning
        self.saved = None        # (x, sigma, image_cond, uncond) of the uncond rows of this step
        self.calls = 0           # how many weak re-runs happened (sanity check in the infotext)


def _networks(loras: set[str]) -> list:
    module = sys.modules.get("networks")
    nets = list(getattr(module, "loaded_networks", []) or [])
    return [n for n in nets if not loras or n.name in loras]


class _Scaled:
    """Context: multiply an attribute of some networks by ω, restore the exact old values on exit."""

    def __init__(self, nets: list, attr: str, omega: float):
        self.nets, self.attr, self.omega, self.old = nets, attr, omega, []

    def __enter__(self):
        self.old = [getattr(n, self.attr) for n in self.nets]
        for n, v in zip(self.nets, self.old):
            setattr(n, self.attr, v * self.omega)

    def __exit__(self, *exc):
        for n, v in zip(self.nets, self.old):
            setattr(n, self.attr, v)
        return False


class _Interpolated:
    """Context: each UNet parameter becomes lerp(base, current, ω) for the call; the exact old values come back on exit.

    In place, one tensor at a time, so that a UNet is never held twice (SDXL's is 10 GB in fp32, on a 24 GB
    machine). A parameter whose values equal the loaded checkpoint file's tensor is restored from that file;
    any other (changed since loading) is cloned first.
    """

    PREFIX = "model.diffusion_model."

    def __init__(self, unet: torch.nn.Module, base_file: str | None, omega: float):
        self.unet, self.base_file, self.omega = unet, base_file, omega
        self.cloned, self.from_file, self.loaded_file = [], [], None

    def __enter__(self):
        if not self.base_file:
            return
        from safetensors import safe_open

        self.loaded_file = shared.sd_model.sd_checkpoint_info.filename
        with safe_open(self.base_file, framework="pt", device="cpu") as base_f, \
                safe_open(self.loaded_file, framework="pt", device="cpu") as loaded_f:
            base_keys, loaded_keys = set(base_f.keys()), set(loaded_f.keys())
            try:
                for name, param in self.unet.named_parameters():
                    key = self.PREFIX + name
                    if key not in base_keys:
                        raise RuntimeError(f"PG reference: base lacks {key}")
                    self._remember(param, key, loaded_f if key in loaded_keys else None)
                    base = base_f.get_tensor(key).to(device=param.device, dtype=param.dtype)
                    param.data.copy_(torch.lerp(base, param.data, self.omega))
            except BaseException:
                self.__exit__()
                raise

    def _remember(self, param, key, loaded_f) -> None:
        if loaded_f is not None:
            original = loaded_f.get_tensor(key).to(device=param.device, dtype=param.dtype)
            if torch.equal(original, param.data):
                self.from_file.append((param, key))
                return
        self.cloned.append((param, param.data.clone()))

    def __exit__(self, *exc):
        for param, data in self.cloned:
            param.data.copy_(data)
        if self.from_file:
            from safetensors import safe_open

            with safe_open(self.loaded_file, framework="pt", device="cpu") as loaded_f:
                for param, key in self.from_file:
                    param.data.copy_(loaded_f.get_tensor(key).to(device=param.device, dtype=param.dtype))
        self.cloned, self.from_file = [], []
        return False


def _condition(uncond, image_cond):
    if isinstance(uncond, dict):
        return {**uncond, "c_concat": [image_cond]}
    return {"c_crossattn": [uncond], "c_concat": [image_cond]}


class PGReferenceScript(common.ReferenceScript):
    def stop(self):
        _active["state"] = None

    def start(self, p, omega, weak_prompt, base, loras):
        base_file = None
        if base is not None:
            info = sd_models.get_closet_checkpoint_match(base)
            if info is None:
                raise RuntimeError(f"PG reference: unknown base {base!r}")
            base_file = info.filename
        state = _State(omega, weak_prompt, base_file, loras)
        setattr(p, STATE_ATTR, state)
        _active["state"] = state

    def first_pass(self, p, state):
        cond = common.weak_prompts(p, state.weak_prompt)
        with _Scaled(_networks(state.loras), "te_multiplier", state.text_omega), devices.autocast():
            state.weak_uc = prompt_parser.get_learned_conditioning(
                shared.sd_model, cond, p.firstpass_steps, None, shared.opts.use_old_scheduling)


def on_cfg_denoiser(params):
    state = _active["state"]
    if state is None or state.weak_uc is None:
        return
    state.saved = None
    omega = state.omega_at(params.sampling_step / max(params.total_sampling_steps, 1))
    if omega >= 1.0:
        return  # plain CFG step: the host's own uncond, no re-run
    uncond = prompt_parser.reconstruct_cond_batch(state.weak_uc, params.denoiser.step)
    params.text_uncond = uncond
    b = len(uncond["crossattn"]) if isinstance(uncond, dict) else len(uncond)
    state.saved = (params.x[-b:].clone(), params.sigma[-b:].clone(), params.image_cond[-b:].clone(), uncond, omega)


def on_cfg_denoised(params):
    state = _active["state"]
    if state is None or state.saved is None:
        return
    x, sigma, image_cond, uncond, omega = state.saved
    state.saved = None
    b = len(x)
    unet = shared.sd_model.model.diffusion_model
    with torch.no_grad(), _Scaled(_networks(state.loras), "unet_multiplier", omega), \
            _Interpolated(unet, state.base_file, omega):
        weak = params.inner_model(x, sigma, cond=_condition(uncond, image_cond))
    params.x[-b:] = weak
    state.calls += 1


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_cfg_denoised(on_cfg_denoised)
