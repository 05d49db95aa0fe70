"""Forge's CFG step (modules/sd_samplers_cfg_denoiser.py:183-220 → backend/sampling/sampling_function.py
sampling_function) as PG meets it: our statement, not a copy.

- on_cfg_denoiser fires with B rows of x; the step then reads x, sigma, text_cond and text_uncond FROM
  the params object (sampling_function.py:330-333);
- skip early CFG runs the cond entries alone at CFG scale 1;
- the UNet patcher of `sd_model.forge_objects` is loaded (its LoRAs merged) before the batched call;
  on_cfg_denoised never fires.
"""
from modules import prompt_parser, shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.sd_samplers import InterruptedException


def forge_cfg_step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
    # found when the step runs: Forge Neo's CFG step is Forge 2's (docs/forks.md §3), so the Neo tests run this one
    # with Neo's double as `backend` (tests/host/test_fork_script.py)
    from backend.sampling.sampling_function import calc_cond_uncond_batch

    if shared.state.interrupted:
        raise InterruptedException
    _, text_cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
    text_uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
    params = CFGDenoiserParams(x, image_cond, sigma, shared.state.sampling_step, shared.state.sampling_steps,
                               text_cond, text_uncond, self)
    cfg_denoiser_callback(params)
    opts = shared.opts
    skip = bool(opts.skip_early_cond and self.step / self.total_steps <= opts.skip_early_cond)
    patcher = shared.sd_model.forge_objects.unet
    patcher.load()
    x, sigma = params.x, params.sigma
    s = sigma[:, None, None, None]
    c, u = calc_cond_uncond_batch(patcher.model, [{"c_crossattn": params.text_cond}],
                                  None if skip else [{"c_crossattn": params.text_uncond}],
                                  x / (s ** 2 + 1) ** 0.5, sigma * 50, patcher.model_options)
    eps = c if skip else u + (c - u) * cond_scale
    self.step += 1
    return x - eps * s
