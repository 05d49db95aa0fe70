"""txt2img processing: the object's fields, `process_images` and the order of the script hooks.

Claims:
- the hooks run in contract.HOOK_ORDER; an exception in a hook is reported and the job goes on
  (scripts.ScriptRunner); an exception from `p.sample` ends the job and reaches the caller.
- per batch: `<lora:...>` tags are taken out of the prompts and the networks activated, then the
  conditioning is built (c: AND-aware, uc: negative prompts), then `p.sample(conditioning=..., ...)` runs;
  sample calls process_before_every_sampling(p, x=, noise=, c=, uc=) just before sampling.
- hires fix: after the first pass `is_hr_pass` is True, conditioning is rebuilt from hr_prompts /
  hr_negative_prompts at hr_upscale_to_x x hr_upscale_to_y, before_hr and process_before_every_sampling run,
  then img2img sampling with hr_second_pass_steps (or steps); `is_hr_pass` is False again afterwards.
- `cached_params(prompts, steps, extra_network_data, hires_steps, use_old_scheduling)` is the key of the
  host's cond caches, compared with ==: it changes with any argument, the checkpoint and the first-pass size;
  `extra_network_data` / `hr_extra_network_data` hold the parsed `<lora:...>` tags of the batch.
- `firstpass_steps` is the first pass's step count; the infotext is "prompt\\nNegative prompt: ...\\n" (that line only when there is
  a negative prompt), then "key: value" pairs joined by ", ", values quoted by infotext_utils.quote, a key whose value equals
  the key written alone, None values left out.
"""
import re

import torch

from modules import infotext_utils, prompt_parser, sd_models, sd_samplers, shared

LATENT_SCALE = 8
_TAG = re.compile(r"<(\w+):([^>]*)>")


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts = images, infotexts
        self.info = infotexts[0] if infotexts else ""


FIELDS = dict(prompt="", negative_prompt="", width=64, height=64, steps=4, cfg_scale=5.0, sampler_name="Euler", seed=1,
              batch_size=1, n_iter=1, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, hr_sampler_name=None,
              denoising_strength=0.5, s_min_uncond=0.0, refiner_checkpoint=None, refiner_switch_at=None, scripts=None,
              script_args=())


class StableDiffusionProcessingTxt2Img:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(FIELDS)
        if unknown:
            raise TypeError(f"unexpected {sorted(unknown)}")
        vars(self).update({**FIELDS, **kwargs})
        self.script_args = tuple(self.script_args)
        self.extra_generation_params, self.is_api, self.is_hr_pass, self.refiner_checkpoint_info = {}, False, False, None
        self.extra_network_data = self.hr_extra_network_data = None  # set per batch, from the prompts' tags
        self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * self.hr_scale), int(self.height * self.hr_scale)

    def setup_prompts(self):
        n = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else n * [self.prompt]
        self.all_negative_prompts = n * [self.negative_prompt]
        self.all_hr_prompts, self.all_hr_negative_prompts = list(self.all_prompts), list(self.all_negative_prompts)

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        info = getattr(shared.sd_model, "sd_checkpoint_info", None)
        return (list(required_prompts), steps, hires_steps, use_old_scheduling, info, extra_network_data, self.width,
                self.height)

    def _conds(self, prompts, negatives, w, h, steps):
        model = shared.sd_model
        c = prompt_parser.get_multicond_learned_conditioning(model, prompt_parser.SdConditioning(prompts, width=w, height=h), steps)
        uc = prompt_parser.get_learned_conditioning(model, prompt_parser.SdConditioning(negatives, width=w, height=h, is_negative_prompt=True), steps)
        return c, uc

    def _noise(self, shape, offset=0):
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s + offset)) for s in self.seeds])

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        x = self._noise((4, self.height // LATENT_SCALE, self.width // LATENT_SCALE))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        samples = sampler.sample(self, x, conditioning, unconditional_conditioning, image_conditioning=torch.zeros(x.shape[0], 5, 1, 1))
        if not self.enable_hr or shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // LATENT_SCALE, self.hr_upscale_to_x // LATENT_SCALE))
        noise = self._noise(samples.shape[1:], offset=1000)
        _activate_networks(self, self.hr_prompts)
        self.hr_c, self.hr_uc = self._conds([_TAG.sub("", t) for t in self.hr_prompts], self.hr_negative_prompts,
                                            self.hr_upscale_to_x, self.hr_upscale_to_y, self.firstpass_steps)
        hr_sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, shared.sd_model)
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = hr_sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=self.hr_second_pass_steps or self.steps,
                                            image_conditioning=torch.zeros(samples.shape[0], 5, 1, 1))
        self.is_hr_pass = False
        return samples


def _activate_networks(p, prompts):
    import networks  # the Lora extension (its double): absent when the test does not install it
    found = [(name, args.split(":")) for kind, rest in _TAG.findall(prompts[0]) if kind == "lora"
             for name, _, args in [rest.partition(":")]]
    tags = [(name, [a for a in args if a]) for name, args in found]
    setattr(p, "hr_extra_network_data" if p.is_hr_pass else "extra_network_data", {"lora": tags})
    networks.activate(p, tags)


def create_infotext(p, prompt, negative_prompt):
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": p.seed,
              "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    pairs = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}"


def process_images(p):
    runner = p.scripts
    if runner is not None:
        runner.before_process(p)
    if p.refiner_checkpoint:
        p.refiner_checkpoint_info = sd_models.get_closet_checkpoint_match(p.refiner_checkpoint)
    p.setup_prompts()
    if runner is not None:
        runner.process(p)
    images, infotexts = [], []
    for n in range(p.n_iter):
        if shared.state.interrupted:
            break
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        p.hr_prompts, p.hr_negative_prompts = p.all_hr_prompts[batch], p.all_hr_negative_prompts[batch]
        p.seeds = [p.seed + i for i in range(batch.start, batch.stop)]
        if runner is not None:
            runner.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
        _activate_networks(p, p.prompts)
        if runner is not None:
            runner.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
        p.firstpass_steps = p.steps
        with torch.no_grad():
            p.c, p.uc = p._conds([_TAG.sub("", t) for t in p.prompts], p.negative_prompts, p.width, p.height, p.steps)
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.seeds,
                               subseed_strength=0, prompts=p.prompts)
        if runner is not None:
            runner.postprocess_batch(p, samples, batch_number=n)
        for i, image in enumerate(samples):
            images.append(image)
            infotexts.append(create_infotext(p, p.prompts[i], p.negative_prompts[i]))
    res = Processed(p, images, infotexts)
    if runner is not None:
        runner.postprocess(p, res)
    return res
