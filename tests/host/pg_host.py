"""Helpers for tests that run PG's script on the host double (not a host file)."""
import os
import sys

import torch
from torch import nn

import networks
from modules import processing, prompt_parser, script_callbacks, scripts, shared

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.environ.get("PG_SCRIPT") or os.path.join(ROOT, "scripts", "personalization_guidance.py")
XYZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "double", "xyz_grid.py")
FIELDS = ["enabled", "omega", "loras", "weak_prompt", "start", "end", "hires", "base_checkpoint", "base_mode", "schedule",
          "omega_end"]
sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))


def load_pg():
    """PG's script (PG_SCRIPT overrides the file, e.g. an old version) and X/Y/Z loaded, the UI built."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    scripts.load_scripts([XYZ, SCRIPT])
    script_callbacks.before_ui_callback()
    script_callbacks.ui_settings_callback()
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(False)
    runner.setup_ui()
    networks.register_network("subject", networks.lora_factory(rank=4, seed=1))
    from network_types import Hada

    networks.register_network("style", lambda net, layer, key: Hada(net, layer, rank=2, seed=2)
                              if key.startswith("diffusion_model") and isinstance(layer, (nn.Linear, nn.Conv2d)) else None)
    networks.register_network("unet_only", lambda net, layer, key: networks.lora_factory(seed=3)(net, layer, key)
                              if key.startswith("diffusion_model") else None)
    return runner


def pg_script(runner):
    return next(s for s in runner.alwayson_scripts if s.title() == "Personalization Guidance")


def pg_module():
    return next(d.module for d in scripts.scripts_data if d.path == SCRIPT)


def make_p(runner, pg=None, **kw):
    args = list(runner.default_script_args())
    if pg is not None:
        script = pg_script(runner)
        values = pg if isinstance(pg, list) else [pg]
        args[script.args_from:script.args_from + len(values)] = values
    kw.setdefault("prompt", "a photo of sks cat <lora:subject:1>")
    kw.setdefault("negative_prompt", "blurry")
    return processing.StableDiffusionProcessingTxt2Img(scripts=runner, script_args=args, **kw)


def run(runner, pg=None, **kw):
    p = make_p(runner, pg, **kw)
    return processing.process_images(p), p


def images(res):
    return torch.stack(list(res.images))


def assert_no_hooks():
    for module in shared.sd_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__


class SlowReference:
    """The weak branch recomputed in a second call with the networks at ω × strength (test-only)."""

    def __init__(self, omega, selected=None, weak_prompt="negative", text_omega=None):
        """`omega`: a number, or a function of the step's fraction done (a schedule; ω = 1: plain CFG step);
        `text_omega`: ω of the text encoder's weak conditioning (default: the UNet's)."""
        self.schedule = omega if callable(omega) else (lambda fraction: omega)
        self.text_omega = text_omega
        self.selected, self.weak_prompt = selected, weak_prompt
        self.omega, self.rows = None, None

    def __enter__(self):
        script_callbacks.on_cfg_denoiser(self.on_denoiser)
        script_callbacks.on_cfg_denoised(self.on_denoised)
        return self

    def __exit__(self, *exc):
        script_callbacks.remove_callbacks_for_function(self.on_denoiser)
        script_callbacks.remove_callbacks_for_function(self.on_denoised)

    def with_scale(self, fn, te=False):
        nets = [n for n in networks.loaded_networks if self.selected is None or n.name in self.selected]
        saved = [(n.te_multiplier, n.unet_multiplier) for n in nets]
        text_omega = self.omega if self.text_omega is None else self.text_omega
        try:
            for n in nets:
                n.te_multiplier = n.te_multiplier * text_omega if te else n.te_multiplier
                n.unet_multiplier = n.unet_multiplier * self.omega
            return fn()
        finally:
            for n, (te_m, unet_m) in zip(nets, saved):
                n.te_multiplier, n.unet_multiplier = te_m, unet_m

    def on_denoiser(self, params):
        self.omega = self.schedule(params.sampling_step / max(params.total_sampling_steps, 1))
        self.rows = None
        if self.omega >= 1.0:
            return  # plain CFG step
        p = params.denoiser.p
        prompts = list(p.negative_prompts) if self.weak_prompt == "negative" else [""] * len(p.negative_prompts)
        size = dict(width=p.hr_upscale_to_x, height=p.hr_upscale_to_y) if p.is_hr_pass else dict(width=p.width, height=p.height)
        weak = self.with_scale(lambda: prompt_parser.get_learned_conditioning(
            shared.sd_model, prompt_parser.SdConditioning(prompts, is_negative_prompt=True, **size), p.firstpass_steps), te=True)
        weak = prompt_parser.reconstruct_cond_batch(weak, params.denoiser.step)
        if params.text_uncond.shape[1] == weak.shape[1] + 1:  # marked conditioning (ControlNet): same mark
            weak = torch.cat([params.text_uncond[:, :1], weak], 1)
        params.text_uncond = weak
        b = weak.shape[0]
        cond_tokens = params.text_cond.shape[1]
        if shared.opts.pad_cond_uncond and weak.shape[1] < cond_tokens:  # the host pads it in the call
            empty = shared.sd_model.cond_stage_model_empty_prompt
            tokens = _crossattn(weak)
            tokens = torch.cat([tokens, empty.repeat(b, (cond_tokens - tokens.shape[1]) // empty.shape[1], 1)], 1)
            weak = {**weak, "crossattn": tokens} if isinstance(weak, dict) else tokens
        self.rows = (params.x[-b:].clone(), params.sigma[-b:].clone(), params.image_cond[-b:].clone(), weak)

    def on_denoised(self, params):
        if self.rows is None:
            return
        x, sigma, image_cond, uncond = self.rows
        cond = {**uncond} if isinstance(uncond, dict) else {"c_crossattn": [uncond]}  # SDXL: crossattn + vector
        out = self.with_scale(lambda: params.inner_model(x, sigma, cond={**cond, "c_concat": [image_cond]}))
        params.x[-x.shape[0]:] = out


def _crossattn(cond):
    return cond["crossattn"] if isinstance(cond, dict) else cond


def _classify(context, cond, uncond):
    def hit(refs):
        t = min(context.shape[1], refs.shape[1])
        return (context[:, None, :t] == refs[None, :, :t]).flatten(2).all(2).any(1)
    is_c, is_u = hit(cond), hit(uncond)
    return "".join("B" if c and u else "C" if c else "U" if u else "?" for c, u in zip(is_c.tolist(), is_u.tolist()))


class LayoutRecorder:
    """Per step, the row layout of each UNet call ("C"/"U"/"B"/"?", see contract.LAYOUTS)."""

    def __init__(self):
        self.steps, self.params = [], []

    def on_denoiser(self, params):
        self.step = (_crossattn(params.text_cond), _crossattn(params.text_uncond))
        self.steps.append([])
        self.params.append({k: getattr(params, k) for k in vars(params)})

    def before_call(self, module, args, kwargs):
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        self.steps[-1].append(_classify(context, *self.step))

    def __enter__(self):
        script_callbacks.on_cfg_denoiser(self.on_denoiser)
        self.handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(self.before_call, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        script_callbacks.remove_callbacks_for_function(self.on_denoiser)
        self.handle.remove()
