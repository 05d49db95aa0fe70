"""reForge's CFG step (modules/sd_samplers_cfg_denoiser.py) as PG meets it: our statement, not a copy.

- on_cfg_denoiser fires with B rows of x (no cond/uncond concatenation); what a callback leaves in
  params.text_cond / params.text_uncond is what runs, params.x is NOT read back (the host keeps its own x);
- skip early CFG / NGMS run the cond entries alone at CFG scale 1 (no uncond entry at all);
- the step goes through ldm_patched's sampling_function on `sd_model.forge_objects.unet`, whose
  weights the host has merged (the patcher is loaded) before the call; on_cfg_denoised never fires.
"""
from modules import prompt_parser, shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback

from ldm_patched.modules.samplers import sampling_function
from modules.sd_samplers import InterruptedException


def reforge_cfg_step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
    """Replaces the A1111 double's CFGDenoiser.__call__ (same sampler loop around it)."""
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
    patcher.patch_model()  # the host loads the pass's patcher (merging its LoRAs) before sampling
    s = sigma[:, None, None, None]
    uncond_entries = None if skip else [{"c_crossattn": params.text_uncond}]
    eps = sampling_function(patcher.model, x / (s ** 2 + 1) ** 0.5, sigma * 50, uncond_entries,
                            [{"c_crossattn": params.text_cond}], 1.0 if skip else cond_scale,
                            patcher.model_options)
    self.step += 1
    return x - eps * s
