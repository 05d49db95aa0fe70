"""Sampling: an Euler sampler around the CFG denoiser, laid out as the host lays out CFG's rows.

Claims about the denoiser (modules/sd_samplers_cfg_denoiser.py), one call per sampling step:
- rows: every cond row first (image i's x repeated once per AND-subprompt, images in order), then one
  uncond row per image; on_cfg_denoiser sees them (contract.CFG_DENOISER_PARAMS) and what it leaves in
  x / image_cond / sigma / text_cond / text_uncond is what runs.
- skipping the uncond rows: "skip early CFG" while step/total <= opts.skip_early_cond, or NGMS on odd
  steps (every step with opts.s_min_uncond_all) while sigma[0] < s_min_uncond. The uncond rows are dropped
  and each image's first cond output stands in for them; CFG scale 1.
- cond and uncond of different token counts: with opts.pad_cond_uncond the shorter is padded with the
  empty prompt's encoding; else the cond rows run in chunks (2 x batch size with batch_cond_uncond, else
  batch size) and the uncond rows in a call of their own.
- same token counts: one call with all rows when opts.batch_cond_uncond, else chunks of batch size over all
  rows in order (a chunk may hold cond and uncond rows).
- the model is called as inner_model(x, sigma, cond={"c_crossattn": [c], "c_concat": [image_cond]});
  on_cfg_denoised sees the outputs (in-place edits count), then CFG combines them.
- dict conditioning (SDXL; chosen by the uncond the step starts with, before on_cfg_denoiser): every
  tensor of the dict is concatenated / sliced by rows like a tensor conditioning, token counts are read
  from `.shape` (a DictWithShape's is its crossattn's), padding pads only "crossattn", and the model gets
  cond={**c, "c_concat": [image_cond]}, i.e. {"crossattn": ..., "vector": ..., "c_concat": [...]}.
- a refiner switch (p.refiner_checkpoint_info, step/total >= p.refiner_switch_at) happens before the
  step's rows are built; an interrupt (state.interrupted) ends sampling at the next step without error.
"""
import types

import torch

from modules import prompt_parser, sd_models, shared
from modules.script_callbacks import CFGDenoisedParams, CFGDenoiserParams, cfg_denoised_callback, cfg_denoiser_callback


CONFIGS = {name: types.SimpleNamespace(name=name, total_steps=lambda steps: steps) for name in ("Euler", "Euler a")}


def find_sampler_config(name):
    return CONFIGS.get(name)


class InterruptedException(BaseException):
    pass


def _cat(conds):
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


def _rows(cond, a, b):
    return {k: v[a:b] for k, v in cond.items()} if isinstance(cond, dict) else cond[a:b]


def _pad(cond, chunks, empty):
    """`cond` with `chunks` copies of the empty prompt's tokens appended (only crossattn for dicts)."""
    if isinstance(cond, dict):
        return prompt_parser.DictWithShape({**cond, "crossattn": _pad(cond["crossattn"], chunks, empty)})
    return torch.cat([cond, empty.repeat(cond.shape[0], chunks, 1)], 1)


class CFGDenoiser:
    def __init__(self, sampler):
        self.sampler, self.p, self.step, self.total_steps = sampler, None, 0, 0

    def inner_model(self, x, sigma, cond):
        s = sigma[:, None, None, None]
        eps = shared.sd_model.apply_model(x / (s ** 2 + 1) ** 0.5, sigma * 50, cond)
        return x - eps * s

    def _switch_refiner(self):
        info, at = getattr(self.p, "refiner_checkpoint_info", None), getattr(self.p, "refiner_switch_at", None)
        if info is not None and at is not None and self.step / self.total_steps >= at:
            if shared.sd_model.sd_checkpoint_info is not info:
                self.p.extra_generation_params["Refiner"] = info.short_title
                sd_models.reload_model_weights(info=info)

    def __call__(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        opts = shared.opts
        if shared.state.interrupted:
            raise InterruptedException
        self._switch_refiner()
        conds_list, text_cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        text_uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        dict_cond = isinstance(text_uncond, dict)
        b = len(conds_list)
        rows = [i for i, parts in enumerate(conds_list) for _ in parts] + list(range(b))
        params = CFGDenoiserParams(x[rows], image_cond[rows], sigma[rows], shared.state.sampling_step,
                                   shared.state.sampling_steps, text_cond, text_uncond, self)
        cfg_denoiser_callback(params)
        x_in, ic_in, sigma_in = params.x, params.image_cond, params.sigma
        text_cond, text_uncond = params.text_cond, params.text_uncond

        skip = False
        if opts.skip_early_cond and self.step / self.total_steps <= opts.skip_early_cond:
            skip = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        if skip:
            x_in, sigma_in = x_in[:-b], sigma_in[:-b]

        if opts.pad_cond_uncond and text_cond.shape[1] != text_uncond.shape[1]:
            empty = shared.sd_model.cond_stage_model_empty_prompt
            short, long = sorted((text_cond, text_uncond), key=lambda t: t.shape[1])
            padded = _pad(short, (long.shape[1] - short.shape[1]) // empty.shape[1], empty)
            text_cond, text_uncond = (padded, long) if short is text_cond else (long, padded)

        def run(a, b_, c):
            condition = {**c} if dict_cond else {"c_crossattn": [c]}
            condition["c_concat"] = [ic_in[a:b_]]
            return self.inner_model(x_in[a:b_], sigma_in[a:b_], cond=condition)

        x_out = torch.zeros_like(x_in)
        if skip or text_cond.shape[1] == text_uncond.shape[1]:
            cond_in = text_cond if skip else _cat([text_cond, text_uncond])
            size = x_in.shape[0] if opts.batch_cond_uncond else b
            for a in range(0, x_in.shape[0], size):
                x_out[a:a + size] = run(a, a + size, _rows(cond_in, a, a + size))
        else:
            size = 2 * b if opts.batch_cond_uncond else b
            r = text_cond.shape[0]
            for a in range(0, r, size):
                x_out[a:min(a + size, r)] = run(a, min(a + size, r), _rows(text_cond, a, a + size))
            x_out[-text_uncond.shape[0]:] = run(x_in.shape[0] - text_uncond.shape[0], x_in.shape[0], text_uncond)
        if skip:
            x_out = torch.cat([x_out, x_out[[parts[0][0] for parts in conds_list]]])

        cfg_denoised_callback(CFGDenoisedParams(x_out, shared.state.sampling_step, shared.state.sampling_steps,
                                                self.inner_model))
        scale = 1.0 if skip else cond_scale
        out = x_out[-b:].clone()
        for i, parts in enumerate(conds_list):
            for row, weight in parts:
                out[i] += (x_out[row] - x_out[-b:][i]) * weight * scale
        self.step += 1
        return out


class Sampler:
    def __init__(self, name):
        self.config = find_sampler_config(name)
        self.model_wrap_cfg = CFGDenoiser(self)

    @staticmethod
    def sigmas(steps):
        return torch.cat([torch.linspace(3.0, 0.1, steps), torch.zeros(1)])

    def _launch(self, p, x, sigmas, c, uc, image_conditioning):
        den = self.model_wrap_cfg
        steps = len(sigmas) - 1
        den.p, den.step, den.total_steps = p, 0, self.config.total_steps(steps)
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            for i in range(steps):
                s = sigmas[i].expand(x.shape[0])
                denoised = den(x, s, uc, c, p.cfg_scale, p.s_min_uncond, image_conditioning)
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
                shared.state.sampling_step = i
        except InterruptedException:
            pass
        return x

    def sample(self, p, x, c, uc, image_conditioning=None):
        return self._launch(p, x * self.sigmas(p.steps)[0], self.sigmas(p.steps), c, uc, image_conditioning)

    def sample_img2img(self, p, x, noise, c, uc, steps=None, image_conditioning=None):
        requested = steps or p.steps
        total = int(requested / min(p.denoising_strength, 0.999))
        sched = self.sigmas(total)[total - requested:]
        return self._launch(p, x + noise * sched[0], sched, c, uc, image_conditioning)


def create_sampler(name, sd_model):
    return Sampler(name)
