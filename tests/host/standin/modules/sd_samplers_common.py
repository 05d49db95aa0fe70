"""Stand-in for modules/sd_samplers_common.py (A1111 v1.10.1): Sampler base, InterruptedException, apply_refiner."""
from collections import namedtuple

from modules import shared
from modules.shared import state, opts

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])


class SamplerData(SamplerDataTuple):
    """mirrors sd_samplers_common.SamplerData — second-order samplers call the model twice per step."""

    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    """mirrors sd_samplers_common.InterruptedException (a BaseException)."""


def apply_refiner(cfg_denoiser, sigma=None):
    """Stand-in: no refiner support; always False (the host may switch checkpoints mid-sampling here)."""
    return False


def store_latent(decoded):
    """mirrors sd_samplers_common.store_latent (no live preview)."""
    state.current_latent = decoded


def setup_img2img_steps(p, steps=None):
    """mirrors sd_samplers_common.setup_img2img_steps (img2img_fix_steps off unless steps given)."""
    if steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class Sampler:
    """mirrors sd_samplers_common.Sampler (fields, callback_state, launch_sampling, initialize)."""

    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config: SamplerData = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float('inf')
        self.s_noise = 1.0
        self.conditioning_key = getattr(shared.sd_model.model, 'conditioning_key', 'crossattn')
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d['i']
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, 'mask') else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, 'nmask') else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.eta = p.eta if p.eta is not None else getattr(opts, 'eta_ancestral', 0.0)
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)
        return {}

    def add_infotext(self, p):
        pass
