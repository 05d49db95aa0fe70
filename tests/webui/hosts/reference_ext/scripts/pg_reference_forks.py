"""PG reference for the forks (reForge, Forge, Forge Neo; tests only): PG's weak branch computed the slow, obvious way.

The same script title and arguments as tests/webui/reference_ext (A1111), so the live suite's comparisons
run unchanged: [enabled, omega, weak_prompt ("negative"|"empty"), base_checkpoint ("None" or a checkpoint
of the WebUI's list), loras (comma-separated names to weaken; empty = every LoRA of the prompt)].

* Base checkpoint: θ_ω = lerp(base, θ', ω) for every UNet weight, read tensor by tensor from the two
  checkpoint files; with LoRAs in the prompt, the weak chain's entries (below) are merged by the host's
  function on top of that lerp instead of on top of θ' (the base under the same LoRAs, the selected ones at
  ω × strength, as PG defines θ_ω for a DreamBooth model with LoRAs: README, `base_checkpoint`).

* θ_ω is built by the host's own LoRA loader: the prompt's LoRAs are applied again to the model's original
  UNet and CLIP patchers (`forge_objects_original`), each selected LoRA at ω × its strengths, exactly as
  the host's Lora extension applied them at full strength (`current_lora_hash` records that list).
* The weak conditioning (negative or empty prompt) is encoded once per job with the weak CLIP patcher in
  place of the model's (the host loads and patches whichever `forge_objects.clip` is set), and substituted
  for the host's uncond in on_cfg_denoiser.
* Every UNet call that holds uncond rows (`cond_or_uncond` flag 1) is run a SECOND time with θ_ω written
  into the model's parameters (the host's own merge function over the weak patcher's entries, from the
  original weights the host backed up when it patched the model); the uncond rows are taken from that
  call, and the parameters get their exact values back right after it.

ω over the steps (the optional 6th argument, pg_reference_common.step_omegas): each step's ω comes from the
host's step counter in on_cfg_denoiser; a step at ω = 1 is left to the host (its own uncond, no re-run); θ_ω
is built as above once per distinct ω (the weak CLIP patcher at the ω halfway through the schedule's range).

First pass only (as the A1111 reference); a hires pass runs as the host does.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys

import torch

from modules import prompt_parser, script_callbacks, shared

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", ".."))  # tests/webui
import pg_reference_common as common  # noqa: E402 (a module, not its class: see its docstring)

STATE_ATTR = common.STATE_ATTR
UNCOND = 1  # the uncond mark in transformer_options["cond_or_uncond"]
REFORGE = importlib.util.find_spec("ldm_patched") is not None  # else Forge or Neo (`backend`)
_active = {"state": None}  # the running job's state; jobs run one at a time in the WebUI


class _State:
    def __init__(self, omega: float, weak_prompt: str, loras: set[str], base_file=None):
        self.omega, self.weak_prompt, self.loras, self.base_file = omega, weak_prompt, loras, base_file
        self.weak_unet = self.weak_clip = None
        self.weak_uc = None       # prompt schedules of the weak conditioning
        self.weak_by_omega = {}   # ω -> (key -> θ_ω tensor), built at the first UNet call at that ω (the model is patched then)
        self.weak_weights = None  # key -> θ_ω tensor of the current step's ω (one of weak_by_omega's values)
        self.step_omega = None    # this step's ω (on_cfg_denoiser); None before the first step
        self.calls = 0            # how many weak re-runs happened (printed at the end of the job)


# -- the host's LoRA machinery (the only part that differs between the forks) ---------------------------

def _apply_lora(unet, clip, filename: str, unet_strength: float, te_strength: float, extra: list):
    """One LoRA file applied to clones of (unet, clip), as the host's Lora extension does it."""
    import networks

    state_dict = networks.load_lora_state_dict(filename)
    if REFORGE:
        from ldm_patched.modules.sd import load_lora_for_models

        return load_lora_for_models(unet, clip, state_dict, unet_strength, te_strength, filename=filename)
    return networks.load_lora_for_models(unet, clip, state_dict, unet_strength, te_strength, filename=filename,
                                         online_mode=bool(extra and extra[0]))


def _forge2_layout(patcher) -> bool:
    """Forge 2 keeps LoRAs per file (`lora_patches`, merged by `lora_loader`); reForge and Neo per key (ComfyUI)."""
    return hasattr(patcher, "lora_patches")


def _entries(patcher) -> dict:
    """key -> the patch entries the host merges into that weight, in its order."""
    if not _forge2_layout(patcher):
        return patcher.patches  # Neo's online entries too: merged here once, not per forward (see _without_online)
    merged = {}
    for (_, _, _, online), patches in patcher.lora_patches.items():
        if online:
            raise RuntimeError("PG reference: online (quantized) LoRAs are not supported")
        for key, entries in patches.items():
            merged[key] = merged.get(key, []) + entries
    return merged


def _original(patcher, key: str) -> torch.Tensor:
    """The weight before the host patched it: its backup while patched, the parameter otherwise."""
    forge2 = _forge2_layout(patcher)
    backup = patcher.lora_loader.backup.get(key) if forge2 else patcher.backup.get(key)
    if backup is None:
        return patcher.model.get_parameter(key).data
    return backup if forge2 else backup.weight


def _applied_by_host(patcher, key: str) -> bool:
    """Whether the loaded model has this key's entries, as the host's own load left it (observed, not
    predicted): merged (backed up) or merged per forward (a function on the layer). Neo's load skips some keys
    it holds entries for (raw parameters of a module with children, e.g. Wan's `modulation`)."""
    if _forge2_layout(patcher) or key in patcher.backup:
        return True
    module_name, _, param = key.rpartition(".")
    attr = {"weight": "weight_function", "bias": "bias_function"}.get(param)
    return bool(attr and getattr(patcher.model.get_submodule(module_name), attr, None))


def _merge(entries: list, weight: torch.Tensor, key: str) -> torch.Tensor:
    if REFORGE:
        from ldm_patched.modules.lora import calculate_weight

        return calculate_weight(entries, weight, key)
    from backend.patcher.lora import merge_lora_to_weight

    return merge_lora_to_weight(entries, weight, key, computation_dtype=torch.float32)


# -- θ_ω ------------------------------------------------------------------------------------------------

def _applied_loras(sd_model) -> list:
    """[(filename, unet strength, te strength, extra, name)] as the host's Lora extension applied them."""
    import networks

    applied = ast.literal_eval(sd_model.current_lora_hash or "[]")  # str([[filename, unet, te, ...], ...])
    names = {n.network_on_disk.filename: n.name for n in networks.loaded_networks}
    return [(t[0], float(t[1]), float(t[2]), list(t[3:]), names.get(t[0])) for t in applied]


def _weak_patchers(sd_model, state: _State, omega: float):
    """The model's original UNet and CLIP patchers with the prompt's LoRAs, the selected ones at ω × strength."""
    unet, clip = sd_model.forge_objects_original.unet, sd_model.forge_objects_original.clip
    for filename, unet_strength, te_strength, extra, name in _applied_loras(sd_model):
        scale = omega if not state.loras or name in state.loras else 1.0
        unet, clip = _apply_lora(unet, clip, filename, unet_strength * scale, te_strength * scale, extra)
    return unet, clip


def _weak_weights(loaded_patcher, weak_patcher, start=None) -> dict:
    """θ_ω for every weight the loaded (strong) patcher patches, merged from `start[key]` (float32; a base
    lerp) where given, else from the original weight the host backed up."""
    start = start or {}
    weak_entries = _entries(weak_patcher)
    out = {}
    for key in _entries(loaded_patcher):
        if not _applied_by_host(loaded_patcher, key):
            continue  # θ' lacks these entries: so does the host's loader at ω × strength
        original = _original(loaded_patcher, key)
        first = start[key].clone() if key in start else original.float().clone()
        out[key] = _merge(weak_entries.get(key, []), first, key).to(dtype=original.dtype)
    return out


UNET_PREFIX = "model.diffusion_model."


def _base_weights(model, base_file: str, loaded_file: str, omega: float) -> dict:
    """key -> lerp(base, loaded, ω) in float32 on the CPU for every UNet weight, from the two checkpoint files."""
    from safetensors import safe_open

    out = {}
    with safe_open(base_file, framework="pt", device="cpu") as base_f, \
            safe_open(loaded_file, framework="pt", device="cpu") as loaded_f:
        base_keys = set(base_f.keys())
        for name, _ in model.diffusion_model.named_parameters():
            key = UNET_PREFIX + name
            if key not in base_keys:
                raise RuntimeError(f"PG reference: base lacks {key}")
            base = base_f.get_tensor(key).to(dtype=torch.float32)
            loaded = loaded_f.get_tensor(key).to(dtype=torch.float32)
            out[f"diffusion_model.{name}"] = torch.lerp(base, loaded, omega)
    return out


def _weak_unet_weights(state: _State, loaded_patcher, omega: float, weak_unet) -> dict:
    """θ_ω of every UNet weight the weak re-run writes in, each in its parameter's dtype and device (`weak_unet`:
    the prompt's LoRAs with the selected ones at ω × strength)."""
    model = loaded_patcher.model
    if not state.base_file:
        return _weak_weights(loaded_patcher, weak_unet)
    lerped = _base_weights(model, state.base_file, shared.sd_model.sd_checkpoint_info.filename, omega)
    out = dict(lerped)
    out.update(_weak_weights(loaded_patcher, weak_unet, lerped))  # the prompt's LoRAs on top of the lerp
    for key, value in out.items():
        param = model.get_parameter(key)
        out[key] = value.to(device=param.device, dtype=param.dtype)
    return out


def _encode_weak(p, state: _State):
    """The weak conditioning, encoded with the weak CLIP patcher standing in for the model's."""
    sd_model = p.sd_model
    cond = common.weak_prompts(p, state.weak_prompt)
    strong = sd_model.forge_objects.clip
    sd_model.forge_objects.clip = state.weak_clip
    try:
        # (Neo dropped the use_old_scheduling option and that argument)
        old = () if getattr(shared.opts, "use_old_scheduling", None) is None else (shared.opts.use_old_scheduling,)
        return prompt_parser.get_learned_conditioning(sd_model, cond, getattr(p, "firstpass_steps", p.steps), None, *old)
    finally:
        sd_model.forge_objects.clip = strong


class _without_online:
    """Neo's online LoRAs live in each layer's `weight_function` / `bias_function` (the patcher's per-forward
    merge, backend/patcher/base.py:626-636 at de2193d) on top of the stored θ: while θ_ω (which already holds
    the merged entries) sits in the parameters, those functions are set aside, and put back afterwards."""

    def __init__(self, model, weights: dict):
        self.model, self.keys, self.saved = model, list(weights), []

    def __enter__(self):
        for key in self.keys:
            module_name, _, param = key.rpartition(".")
            module = self.model.get_submodule(module_name)
            attr = "weight_function" if param == "weight" else "bias_function" if param == "bias" else None
            functions = getattr(module, attr, None) if attr else None
            if functions:
                self.saved.append((module, attr, functions))
                setattr(module, attr, [])
        return self

    def __exit__(self, *exc):
        for module, attr, functions in self.saved:
            setattr(module, attr, functions)
        return False


def _plain_call(apply_model, args):
    return apply_model(args["input"], args["timestep"], **args["c"])


def _unet_wrapper(state: _State, loaded_patcher, inner=None):
    """The whole call run twice, at θ' and at θ_ω, through `inner` (a wrapper already set on the patcher,
    e.g. MultiDiffusion's tiles), and the uncond chunks of the call's result taken from the θ_ω run. The
    result is in the call's own [chunks x B] layout whatever `inner` does inside, so nothing here reads a
    tile layout (PG reads it on its own; the two must agree)."""
    run = inner or _plain_call

    def wrapper(apply_model, args):
        flags = args["cond_or_uncond"]
        out = run(apply_model, args).clone()  # Mixture of Diffusers returns its buffer, zeroed by the next call
        omega = state.step_omega
        if UNCOND not in flags or omega is None or omega >= 1.0:
            return out  # no uncond rows, or a plain CFG step of a schedule
        if omega not in state.weak_by_omega:
            # one θ_ω set at a time: a linear schedule has a new ω every step, and a set per step (≈ 2 GB each for
            # an SD 1.5 LoRA in fp32) got a Neo server OOM-killed at 24 GB on 2026-12-03
            state.weak_by_omega.clear()
            # the patcher first_pass built (at the text side's ω) serves that ω; another ω gets its own
            weak_unet = state.weak_unet if omega == state.text_omega else _weak_patchers(shared.sd_model, state, omega)[0]
            state.weak_by_omega[omega] = _weak_unet_weights(state, loaded_patcher, omega, weak_unet)
        state.weak_weights = state.weak_by_omega[omega]
        model = loaded_patcher.model
        strong = {}
        try:
            for key, weak in state.weak_weights.items():
                param = model.get_parameter(key)
                strong[key] = param.data.clone()
                param.data.copy_(weak)
            with _without_online(model, state.weak_weights):
                weak_out = run(apply_model, args)
        finally:
            for key, data in strong.items():
                model.get_parameter(key).data.copy_(data)
        rows = out.shape[0] // len(flags)
        for i, flag in enumerate(flags):
            if flag == UNCOND:
                out[i * rows:(i + 1) * rows] = weak_out[i * rows:(i + 1) * rows]
        state.calls += 1
        return out

    return wrapper


class PGReferenceScript(common.ReferenceScript):
    def stop(self):
        _active["state"] = None

    def start(self, p, omega, weak_prompt, base, loras):
        base_file = None
        if base is not None:
            from modules import sd_models

            info = sd_models.get_closet_checkpoint_match(base)
            if info is None:
                raise RuntimeError(f"PG reference: unknown base {base!r}")
            base_file = info.filename
        setattr(p, STATE_ATTR, _State(omega, weak_prompt, loras, base_file))
        # which reference ran: A1111's lerps the LoRA-merged weights for a base with LoRAs, this one puts the
        # prompt's LoRAs on the lerp (PG's θ_ω); tests/webui/test_pg_webui_dreambooth.py reads this
        p.extra_generation_params["PG reference kind"] = "forks"

    def first_pass(self, p, state):
        state.weak_unet, state.weak_clip = _weak_patchers(p.sd_model, state, state.text_omega)
        state.weak_uc = _encode_weak(p, state)
        unet = p.sd_model.forge_objects.unet.clone()  # the host resets forge_objects before every pass
        inner = unet.model_options.get("model_function_wrapper")  # set by a script before this one (MultiDiffusion)
        unet.model_options["model_function_wrapper"] = _unet_wrapper(state, unet, inner)  # read by the forks' batching
        p.sd_model.forge_objects.unet = unet
        _active["state"] = state


def on_cfg_denoiser(params):
    state = _active["state"]
    if state is not None and state.weak_uc is not None:
        state.step_omega = state.omega_at(params.sampling_step / max(params.total_sampling_steps, 1))
        if state.step_omega < 1.0:  # a plain CFG step of a schedule keeps the host's uncond
            params.text_uncond = prompt_parser.reconstruct_cond_batch(state.weak_uc, params.denoiser.step)


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
