"""Personalization Guidance for the AUTOMATIC1111 WebUI and its forks: UI, process hooks, callbacks, infotext, API, X/Y/Z.

The one entry file every host loads, the same in all of them. No math here: `pg_ext` computes; what
differs between hosts (the UNet module, how weak rows are found, where LoRA differences come from) is
asked of the host's adapter in `pg_hosts`, picked once at load time. This file makes sure every job
ends with nothing of PG left on the model (`p.sample` is wrapped so that the hooks are removed in
`finally`, whatever happens during sampling).
"""
from __future__ import annotations

import ctypes
import html
import logging
import os

import gradio as gr

from modules import devices, prompt_parser, script_callbacks, scripts, sd_models, sd_samplers, shared
from modules.infotext_utils import PasteField
from modules.ui_components import InputAccordion

from pg_ext import config
from pg_ext.checkpoint import (CheckpointMismatch, DeltaCache, checkpoint_deltas, exact_mode_shortfall,
                               read_unet_tensors)
from pg_ext.config import FIELD_BY_NAME, NOTE_KEY, OVERRIDES_ATTR, Settings, SettingsError
from pg_hosts.patches import DENSE_DIFFERENCES
from pg_ext.session import GuidanceSession
import pg_hosts

log = logging.getLogger("personalization_guidance")
if not log.handlers:  # the WebUI shows only warnings of other loggers; PG's one-line status belongs in the console
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
TITLE = "Personalization Guidance"
SESSION_ATTR = "pg_session"
PASS_CHECKPOINT = "checkpoint of the hooked pass"  # key in the session's prepared state
ERROR_ATTR = "pg_error"  # an input error found in `process`, raised when sampling starts
REFUSED = "input error of a pass"  # key in the session's prepared state: see _refuse_pass
BASE_CACHE = DeltaCache(size=1)
WEAK_CACHE: dict = {}  # is_hr_pass -> (key, weak conditioning) of the last such pass, see _encode_weak
HOST = pg_hosts.load(pg_hosts.detect())  # the running host's adapter, found once


def _opt(name: str, default):
    return getattr(shared.opts, name, default) if hasattr(shared, "opts") else default


# -- settings ---------------------------------------------------------------------------------------

def _defaults() -> Settings:
    """Settings defaults, with the user's preferred ω and hires choice from the Settings page."""
    return Settings(omega=float(_opt("pg_default_omega", 0.5)), hires=bool(_opt("pg_hires_default", True)))


def resolve_settings(p, args) -> Settings:
    """The job's settings: script args (positional or one dict), then overrides put on `p`."""
    settings = Settings.from_positional(list(args), defaults=_defaults())
    overrides = getattr(p, OVERRIDES_ATTR, None)
    if overrides:
        settings = Settings.from_values(overrides, defaults=settings)
    if settings.base_checkpoint:
        settings = Settings.from_values({"base_checkpoint": _base_info(settings.base_checkpoint).title}, defaults=settings)
    return settings


def _asks_for_pg(p, args) -> bool:
    """Whether the job asks for PG at all (a malformed switch counts as asking: it is reported)."""
    overrides = getattr(p, OVERRIDES_ATTR, None) or {}
    if "enabled" in overrides:
        value = overrides["enabled"]
    elif args and isinstance(args[0], dict):
        value = args[0].get("enabled", False)
    else:
        value = args[0] if args else False
    try:
        return FIELD_BY_NAME["enabled"].parse("enabled", value)
    except SettingsError:
        return True


def _base_info(name: str):
    """The WebUI's checkpoint entry for `name` (title, name or hash); never a path from a request."""
    info = sd_models.get_closet_checkpoint_match(name)
    if info is None:
        raise SettingsError("base_checkpoint", name, "must be a checkpoint from the WebUI's list (title, name or hash)")
    return info


def request_error(p, error: Exception) -> Exception:
    """An input error as the caller should see it: HTTP 422 through the API, the message in the UI."""
    if getattr(p, "is_api", False):
        from fastapi import HTTPException

        return HTTPException(status_code=422, detail=str(error))
    return error


# -- per-job plumbing -------------------------------------------------------------------------------

def _guard_sample(p) -> None:
    """Wrap `p.sample` once per processing object: refuse bad input before sampling, close PG after it.

    The wrapper reads the job's state from `p` when it runs, so loopback and SD upscale, which call
    `process_images` on the same object again and again, get one wrapper and only the current job's
    session. A copy of a wrapped object (X/Y/Z cells are `copy(p)`) gets a wrapper of its own around
    its own `sample`.
    """
    current = p.sample
    if getattr(current, "pg_owner", None) is p:
        return
    inner = getattr(current, "pg_inner", current)
    owner = getattr(current, "pg_owner", None)
    if owner is not None and getattr(inner, "__self__", None) is owner:
        inner = inner.__func__.__get__(p)  # the copied object's own method, not the original's

    def sample(*args, **kwargs):
        error = getattr(p, ERROR_ATTR, None)
        if error is not None:
            raise request_error(p, error)
        session = getattr(p, SESSION_ATTR, None)
        try:
            _check_selection(p, session)
            try:
                result = inner(*args, **kwargs)
            except RefusedPass as refused:
                raise request_error(p, refused.error) from None
            refused = session.prepared.get(REFUSED) if session is not None else None
            if refused is not None:  # a refused pass that never called the UNet
                raise request_error(p, refused)
            return result
        finally:
            if session is not None:
                _note_missed_steps(p, session)
                _forget_settings_if_pg_never_ran(p, session)
                session.close()

    sample.pg_owner, sample.pg_inner = p, inner
    p.sample = sample


class RefusedPass(Exception):
    """An input error found when a pass began, carried out of the host's sampling to the `p.sample` wrapper."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _refuse_pass(p, session: GuidanceSession, error: Exception) -> None:
    """Stop the job at this pass's first UNet call with `error` (the caller's 4xx, as in `_check_selection`).

    An input error can first show when a pass begins (the hires prompt loads other LoRAs than the first
    pass's), inside `process_before_every_sampling`, whose exceptions every host reports and swallows.
    A UNet pre-hook is the first place on the sampling path whose exceptions reach the caller; it is
    removed when the pass ends, and no weight was changed.
    """
    session.prepared[REFUSED] = error

    def refuse(module, args):
        raise RefusedPass(error)

    handle = HOST.unet(shared.sd_model).register_forward_pre_hook(refuse)
    session.undo_at_end_of_pass(handle.remove)
    log.error("%s", error)


def _note_missed_steps(p, session: GuidanceSession) -> None:
    """Say in the infotext when some steps ran as plain CFG because their rows could not be identified."""
    missed = session.steps_missed
    if not missed:
        return
    total = missed + session.steps_routed
    mixed = session.steps_mixed
    mixed_outcome = "their uncond rows had the weak prompt's encoding but the personalized UNet, neither PG nor plain CFG"
    if not mixed:
        outcome = "those steps ran as plain CFG"
    elif mixed == missed:
        outcome = mixed_outcome
    else:
        outcome = f"{missed - mixed} of them ran as plain CFG; in {mixed} {mixed_outcome}"
    _note(p, f"the weak rows could not be identified in {missed} of {total} guided steps (another extension "
             f"changed the conditioning?): {outcome}")


def _forget_settings_if_pg_never_ran(p, session: GuidanceSession) -> None:
    """Keep only `PG note` in the infotext when no step of the job ran PG: a pasted infotext must not turn
    on what never ran (the note says why it did not)."""
    if session.steps_routed or NOTE_KEY not in p.extra_generation_params:
        return
    for key in config.INFOTEXT_KEYS:
        if key != NOTE_KEY:
            p.extra_generation_params.pop(key, None)


def _guidance_scale(p) -> float:
    """The CFG scale of the pass about to sample: the forks' hires pass has its own (`hr_cfg`)."""
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_cfg", None) is not None:
        return float(p.hr_cfg)
    return float(getattr(p, "cfg_scale", 0.0) or 0.0)


def _check_selection(p, session: GuidanceSession | None) -> None:
    """Input errors found once the prompt's LoRAs are loaded: unknown LoRA names, a base that does not fit.

    Checked here, before sampling, because exceptions in script hooks never reach the caller.
    """
    if session is None:
        return
    try:
        session.select(HOST.loaded_networks())
        _job_base_deltas(session)
    except (SettingsError, CheckpointMismatch) as e:
        raise request_error(p, e) from None


def _encode_weak(p, settings: Settings):
    """The weak branch's conditioning: negative (or empty) prompts through the text encoder at θ_ω.

    Kept between jobs like the host's own `cached_uc`: CFG encodes nothing on a repeated job, so
    without this PG would pay a whole text-encoder pass per job (SDXL: CLIP-L and bigG) that CFG does not.
    """
    hires = bool(getattr(p, "is_hr_pass", False))
    prompts = list(p.hr_negative_prompts if hires else p.negative_prompts)
    if settings.weak_prompt == "empty":
        prompts = [""] * len(prompts)
    width, height = (p.hr_upscale_to_x, p.hr_upscale_to_y) if hires else (p.width, p.height)
    steps, hires_steps = getattr(p, "firstpass_steps", p.steps), None
    if hires:
        sampler = sd_samplers.find_sampler_config(p.hr_sampler_name or p.sampler_name)
        second = p.hr_second_pass_steps or p.steps
        hires_steps = sampler.total_steps(second) if sampler else second
    key = _weak_cache_key(p, settings, prompts, steps, hires_steps, (width, height), hires)
    cached = WEAK_CACHE.get(hires)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    conditioning = prompt_parser.SdConditioning(prompts, width=width, height=height, is_negative_prompt=True)
    with devices.autocast():
        weak = prompt_parser.get_learned_conditioning(shared.sd_model, conditioning, steps, hires_steps,
                                                      *HOST.scheduling_args())
    WEAK_CACHE[hires] = (key, weak) if key is not None else None
    return weak


def _weak_cache_key(p, settings: Settings, prompts, steps, hires_steps, size, hires: bool):
    """What the weak conditioning depends on: the host's own cond-cache key, θ_ω of the text encoder, size.

    None (never cached) where the host has no cond cache or keeps none between jobs.
    """
    host_key = getattr(p, "cached_params", None)
    if host_key is None or not _opt("persistent_cond_cache", True):
        return None
    network_data = getattr(p, "hr_extra_network_data" if hires else "extra_network_data", None)
    # θ_ω of the text encoder: each loaded network as the Lora extension tells them apart, and its file's age
    networks = tuple((getattr(n, "name", None), getattr(n, "te_multiplier", None), getattr(n, "unet_multiplier", None),
                      getattr(n, "dyn_dim", None), getattr(n, "mtime", None)) for n in HOST.loaded_networks())
    return (host_key(prompts, steps, network_data, hires_steps, *HOST.scheduling_args()), size, settings,
            networks, _opt("lora_functional", False), id(shared.sd_model))


def _job_base_deltas(session: GuidanceSession) -> dict:
    """The base differences for this job and loaded checkpoint: built once per job even with cache size 0."""
    sd_model = shared.sd_model
    unet = HOST.unet(sd_model)
    key = (id(unet), getattr(getattr(sd_model, "sd_checkpoint_info", None), "filename", None))
    if ("base", key) not in session.prepared:
        session.prepared[("base", key)] = _base_deltas(session.settings, sd_model, unet)
    return session.prepared[("base", key)]


def _base_deltas(settings: Settings, sd_model, unet) -> dict:
    """Differences of the loaded UNet from the base checkpoint (cached between jobs)."""
    if not settings.base_checkpoint:
        return {}
    if not HOST.SUPPORTS_BASE_CHECKPOINT:
        raise SettingsError("base_checkpoint", settings.base_checkpoint,
                            f"is not supported in this WebUI ({HOST.NAME}) yet: PG works with LoRAs here")
    info = _base_info(settings.base_checkpoint)
    loaded = getattr(sd_model, "sd_checkpoint_info", None)
    if loaded is not None and os.path.abspath(loaded.filename) == os.path.abspath(info.filename):
        raise SettingsError("base_checkpoint", settings.base_checkpoint, "must differ from the loaded checkpoint")
    low = settings.base_mode == "low-memory"
    try:
        modified = os.path.getmtime(info.filename)
    except OSError:
        raise SettingsError("base_checkpoint", info.title, "is in the WebUI's checkpoint list but its file is "
                            "gone: refresh the list or pick another checkpoint") from None
    key = (id(unet), getattr(loaded, "filename", None), info.filename, modified, low)

    def build():
        log.info("PG: reading base checkpoint %s", info.title)
        try:
            return checkpoint_deltas(unet, read_unet_tensors(info.filename), original=HOST.original_param, low_memory=low,
                                     energy=float(_opt("pg_low_memory_energy", 0.9)))
        except CheckpointMismatch:
            raise
        except Exception as e:  # OSError, safetensors' header errors: the file is damaged or unreadable
            # the message names the checkpoint, never the server's path (it reaches API clients)
            raise SettingsError("base_checkpoint", info.title, "could not be read as a safetensors checkpoint "
                                f"({type(e).__name__}): the file is damaged or incomplete") from None
        finally:
            _return_freed_memory()

    BASE_CACHE.resize(int(_opt("pg_base_cache_size", 1)))
    if not low:
        _check_exact_fits(sd_model, unet, read_base=key not in BASE_CACHE)
    entry = BASE_CACHE.get(key, build)
    if low:
        log.info("PG: low-memory base differences: %.1f%% of the UNet, relative error %.3f",
                 100 * entry.memory_fraction, entry.relative_error)
    return entry.deltas


def _check_exact_fits(sd_model, unet, read_base: bool) -> None:
    """Refuse exact base mode before sampling when its memory is not free (never an out-of-memory crash)."""
    shortfall = exact_mode_shortfall(unet, devices.device, devices.dtype_unet, read_base,
                                     keep_on_device=not HOST.moves_blocks_per_call(sd_model))
    if shortfall:
        raise SettingsError("base_mode", "exact", f"needs {shortfall} for this checkpoint; choose 'low-memory' "
                            f"(at most {config.LOW_MEMORY_BUDGET:.0%} of the UNet's memory)")


def _note(p, text: str) -> None:
    p.extra_generation_params[NOTE_KEY] = text
    log.warning("Personalization Guidance: %s", text)


def _crossattn(cond):
    return cond.get("crossattn") if isinstance(cond, dict) else cond


def _vector(cond):
    """sgm's pooled conditioning (SDXL's `y`), None for a plain tensor conditioning."""
    return cond.get("vector") if isinstance(cond, dict) else None


# -- the script -------------------------------------------------------------------------------------

class PersonalizationGuidanceScript(scripts.Script):
    sorting_priority = 15  # Forge-style ordering hint; ignored by A1111

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        defaults = _defaults()
        f = FIELD_BY_NAME
        with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
            gr.HTML(f"<p class='pg-help'>{html.escape(f['enabled'].help)}</p>")
            with gr.Row():
                omega = gr.Slider(0.0, 1.0, value=defaults.omega, step=0.01, label=f["omega"].label,
                                  elem_id=self.elem_id("omega"), tooltip=f["omega"].help)
                weak_prompt = gr.Radio(list(config.WEAK_PROMPTS), value=defaults.weak_prompt,
                                       label=f["weak_prompt"].label, elem_id=self.elem_id("weak_prompt"),
                                       tooltip=f["weak_prompt"].help)
            loras = gr.Textbox(value="", label=f["loras"].label, placeholder="empty = every LoRA in the prompt",
                               elem_id=self.elem_id("loras"), tooltip=f["loras"].help)
            with gr.Row():
                start = gr.Slider(0.0, 1.0, value=defaults.start, step=0.01, label=f["start"].label,
                                  elem_id=self.elem_id("start"), tooltip=f["start"].help)
                end = gr.Slider(0.0, 1.0, value=defaults.end, step=0.01, label=f["end"].label,
                                elem_id=self.elem_id("end"), tooltip=f["end"].help)
                hires = gr.Checkbox(value=defaults.hires, label=f["hires"].label, elem_id=self.elem_id("hires"),
                                    tooltip=f["hires"].help)
            with gr.Row():
                schedule = gr.Radio(list(config.SCHEDULES), value=defaults.schedule, label=f["schedule"].label,
                                    elem_id=self.elem_id("schedule"), tooltip=f["schedule"].help)
                omega_end = gr.Slider(0.0, 1.0, value=defaults.omega_end, step=0.01, label=f["omega_end"].label,
                                      elem_id=self.elem_id("omega_end"), tooltip=f["omega_end"].help)
            # DreamBooth controls only where the host's adapter supports a base checkpoint (hidden, not
            # removed, elsewhere: the positional arguments and the paste fields stay the same in every host)
            with gr.Row(visible=HOST.SUPPORTS_BASE_CHECKPOINT) as self.base_row:
                with gr.Column(scale=2):
                    with gr.Row():  # dropdown + refresh tool button, as the WebUI's own checkpoint pickers
                        base = gr.Dropdown(["None"] + sd_models.checkpoint_tiles(), value="None",
                                           label=f["base_checkpoint"].label, elem_id=self.elem_id("base_checkpoint"),
                                           tooltip=f["base_checkpoint"].help)
                        _refresh_button(base, self.elem_id("base_refresh"))
                with gr.Column(scale=1):
                    base_mode = gr.Radio(list(config.BASE_MODES), value=defaults.base_mode,
                                         label=f["base_mode"].label, elem_id=self.elem_id("base_mode"),
                                         tooltip=f["base_mode"].help)
        controls = {"enabled": enabled, "omega": omega, "loras": loras, "weak_prompt": weak_prompt, "start": start,
                    "end": end, "hires": hires, "base_checkpoint": base, "base_mode": base_mode,
                    "schedule": schedule, "omega_end": omega_end}
        self.infotext_fields = _paste_fields(controls)
        self.paste_field_names = [k for k in config.INFOTEXT_KEYS if k != NOTE_KEY]
        return [controls[name] for name in config.FIELD_NAMES]

    def process(self, p, *args):
        _release(p)
        for key in config.INFOTEXT_KEYS:  # X/Y/Z cells share this dict: never leave another cell's keys
            p.extra_generation_params.pop(key, None)
        try:
            settings = resolve_settings(p, args)
        except SettingsError as e:
            if not _asks_for_pg(p, args):
                return  # PG is off: a stale value (e.g. a deleted base checkpoint) must not break the job
            log.error("%s", e)
            setattr(p, ERROR_ATTR, e)
            _guard_sample(p)
            return
        if not settings.enabled:
            return
        p.extra_generation_params.update(settings.infotext())
        if not settings.active():
            return  # ω = 1: plain CFG exactly; the infotext still records that PG was on
        setattr(p, SESSION_ATTR, GuidanceSession(settings))
        _guard_sample(p)

    def process_before_every_sampling(self, p, *args, **kwargs):
        session = getattr(p, SESSION_ATTR, None)
        if session is None:
            return
        session.end_pass()
        if getattr(p, "is_hr_pass", False) and not session.settings.hires:
            return
        if HOST.replacement_unet_active():
            _note(p, "off: a replacement UNet (e.g. TensorRT) is active, its layers cannot be hooked")
            return
        if _guidance_scale(p) == 1.0:
            _note(p, "off for this pass: CFG scale 1 runs no unconditional branch (the host skips it; distilled-"
                     "guidance models such as Flux run this way), so there is nothing for PG to weaken")
            return
        try:
            plan = self._begin_pass(p, session)
        except (SettingsError, CheckpointMismatch) as e:  # the user's input: a 4xx in every host, not a note
            session.end_pass()
            _refuse_pass(p, session, e)
            return
        except Exception as e:  # PG's limitation (a layer type, a quantized weight): plain CFG, said in the infotext
            session.end_pass()
            _note(p, f"off for this pass: {e}")
            return
        if plan is None:
            _note(p, "no LoRA or base checkpoint to act on: ran as plain CFG")
            return
        settings = session.settings
        omega = {"constant": f"{settings.omega:.2f}", "auto": "auto"}.get(
            settings.schedule, f"{settings.omega:.2f}→{settings.omega_end:.2f} ({settings.schedule})")
        log.info("PG: ω=%s on %d UNet layers, %d text-encoder layers (%s)", omega,
                 plan.unet_layers, plan.text_layers, ", ".join(plan.networks) or "base checkpoint")

    @staticmethod
    def _begin_pass(p, session: GuidanceSession):
        session.prepared[PASS_CHECKPOINT] = _checkpoint_file(shared.sd_model)
        try:
            return HOST.begin_pass(p, session, encode_weak=lambda: _encode_weak(p, session.settings),
                                   extra_unet_deltas=_job_base_deltas(session))
        finally:
            DENSE_DIFFERENCES.end_round()  # the forks' dense LoRA differences this pass did not use are dropped

    def postprocess(self, p, processed, *args):
        _release(p)


def _checkpoint_file(sd_model) -> str | None:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "filename", None)


def _release(p) -> None:
    """End the object's previous PG job, if any (a job's end, or the start of the next one on the same `p`)."""
    if hasattr(p, ERROR_ATTR):
        delattr(p, ERROR_ATTR)
    session = getattr(p, SESSION_ATTR, None)
    if session is not None:
        session.end_job()
        delattr(p, SESSION_ATTR)
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Give the buffers PG freed (a base's read, θ_ω weights of a run) back to the OS.

    glibc keeps large freed blocks in the process, so without this the WebUI's RSS would stay at its
    peak after a DreamBooth job although PG holds nothing but its cache.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (Windows, macOS, musl): nothing to do


def _refresh_button(dropdown, elem_id):
    from modules import ui_common

    return ui_common.create_refresh_button(dropdown, sd_models.list_models,
                                           lambda: {"choices": ["None"] + sd_models.checkpoint_tiles()}, elem_id)


def _paste_fields(controls: dict) -> list:
    """Infotext paste: every control from its key; without 'PG omega' PG turns off, others to defaults."""
    d = Settings()

    def read(name, key, default):
        def value(params):
            if "PG omega" not in params:
                return gr.update()
            if name == "base_checkpoint" and key in params:
                info = sd_models.get_closet_checkpoint_match(params[key])
                return info.title if info else gr.update()
            return config.infotext_value(params, key, default)
        return value

    fields = [PasteField(controls["enabled"], lambda params: "PG omega" in params)]
    for field in config.FIELDS:
        if field.infotext:
            default = getattr(d, field.name)
            default = ", ".join(default) if isinstance(default, tuple) else ("None" if default == "" else default)
            fields.append(PasteField(controls[field.name], read(field.name, field.infotext, default)))
    return fields


# -- CFG step ---------------------------------------------------------------------------------------

def on_cfg_denoiser(params) -> None:
    """Route this step's rows; swap in the weak conditioning when the text side is weakened too."""
    p = getattr(params.denoiser, "p", None)
    session = getattr(p, SESSION_ATTR, None)
    if session is None or session.router is None:
        return
    if (session.unet is not HOST.unet(shared.sd_model)
            or session.prepared.get(PASS_CHECKPOINT) != _checkpoint_file(shared.sd_model)):
        # a refiner: another model object, or (checkpoint cache 1) new weights loaded into the same one
        _note(p, "off after a model switch (refiner) during sampling")
        session.end_pass()
        return
    fraction_done = params.sampling_step / max(params.total_sampling_steps, 1)
    omega = session.settings.omega_at(fraction_done)  # host-side, once per step: the hooks only read it
    active = session.settings.in_range(fraction_done) and omega < 1.0
    weak = session.plan.weak_conditioning if session.plan else None
    weak_uncond, uncond_is_weak = None, False
    if weak is not None and active:
        weak_uncond = HOST.weak_uncond(prompt_parser.reconstruct_cond_batch(weak, params.denoiser.step),
                                       params.text_uncond)
        if not session.places_weak_conditioning(_crossattn(weak_uncond), _crossattn(params.text_uncond)):
            # rows marked by the host (forks), or token counts the host would batch differently (the empty
            # weak prompt next to a long negative one): the host runs the weak conditioning as its uncond
            params.text_uncond, weak_uncond, uncond_is_weak = weak_uncond, None, True
    session.step(active, _crossattn(params.text_cond), _crossattn(params.text_uncond), omega,
                 weak_context=_crossattn(weak_uncond), weak_y=_vector(weak_uncond), uncond_is_weak=uncond_is_weak)


def on_model_loaded(sd_model) -> None:
    BASE_CACHE.clear()
    WEAK_CACHE.clear()
    DENSE_DIFFERENCES.clear()


# -- X/Y/Z plot -------------------------------------------------------------------------------------

def _xyz_module():
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") or \
                os.path.basename(getattr(data, "path", "")) == "xyz_grid.py":
            return data.module
    return None


def _axis_setter(name: str):
    def apply(p, value, values):
        overrides = dict(getattr(p, OVERRIDES_ATTR, None) or {})  # copy: cells are shallow copies of one p
        overrides[name] = value
        if name != "enabled":
            overrides.setdefault("enabled", True)
        setattr(p, OVERRIDES_ATTR, overrides)
    return apply


def _axis_confirm(name: str):
    """Every value of the axis checked before the first cell; through the API a bad one answers 422
    (the X/Y/Z script calls this inside the job, where a plain error would be a 500)."""
    def confirm(p, values):
        try:
            for value in values:
                Settings.from_values({name: value})
                if name == "base_checkpoint" and str(value).strip().lower() not in ("", "none"):
                    _base_info(value)
        except SettingsError as error:
            raise request_error(p, error) from error
    return confirm


AXES = (  # (label, API name, value type)
    ("[PG] ω", "omega", float),
    ("[PG] Enabled", "enabled", str),
    ("[PG] Start at", "start", float),
    ("[PG] End at", "end", float),
    ("[PG] Weak prompt", "weak_prompt", str),
    ("[PG] LoRAs", "loras", str),
    ("[PG] Base checkpoint", "base_checkpoint", str),
    ("[PG] ω schedule", "schedule", str),
    ("[PG] ω at the end", "omega_end", float),
)


def add_xyz_axes() -> None:
    """Register the [PG] axes once per X/Y/Z module (again after "Reload UI": a new module object)."""
    xyz = _xyz_module()
    if xyz is None or any(getattr(o, "label", "").startswith("[PG]") for o in xyz.axis_options):
        return
    choices = {"enabled": lambda: ["True", "False"], "weak_prompt": lambda: list(config.WEAK_PROMPTS),
               "schedule": lambda: list(config.SCHEDULES),
               "base_checkpoint": lambda: ["None"] + sd_models.checkpoint_tiles()}
    for label, name, kind in AXES:
        xyz.axis_options.append(xyz.AxisOption(
            label, kind, _axis_setter(name), format_value=_axis_label(label), confirm=_axis_confirm(name),
            cost=0.8 if name == "base_checkpoint" else 0.0, choices=choices.get(name)))


def _axis_label(label: str):
    short = label.replace("[PG] ", "PG ")

    def fmt(p, opt, value):
        if isinstance(value, float):
            value = f"{value:g}"
        return f"{short}: {value}"
    return fmt


# -- Settings page ----------------------------------------------------------------------------------

def on_ui_settings() -> None:
    section = ("personalization_guidance", TITLE)
    options = {
        "pg_default_omega": shared.OptionInfo(0.5, "Default ω (weak model strength) for new sessions", gr.Slider,
                                              {"minimum": 0.0, "maximum": 1.0, "step": 0.01}).info(
            FIELD_BY_NAME["omega"].help.split(" The default")[0]).needs_reload_ui(),
        "pg_hires_default": shared.OptionInfo(True, "Run PG in the hires. fix pass by default").needs_reload_ui(),
        "pg_base_cache_size": shared.OptionInfo(1, "Base checkpoints kept in memory between jobs", gr.Slider,
                                                {"minimum": 0, "maximum": 4, "step": 1}).info(
            "0 = read the base again for every job; each kept base costs about one UNet of RAM (exact mode)"),
        "pg_low_memory_energy": shared.OptionInfo(0.9, "Low-memory mode: share of the difference's energy kept",
                                                  gr.Slider, {"minimum": 0.5, "maximum": 0.999, "step": 0.001}),
    }
    for key, info in options.items():
        info.section = section
        shared.opts.add_option(key, info)


def on_script_unloaded() -> None:
    BASE_CACHE.clear()
    WEAK_CACHE.clear()
    DENSE_DIFFERENCES.clear()


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_model_loaded(on_model_loaded)
script_callbacks.on_before_ui(add_xyz_axes)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_script_unloaded(on_script_unloaded)
