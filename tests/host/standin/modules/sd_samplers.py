"""Stand-in for modules/sd_samplers.py (A1111 v1.10.1): sampler registry, find_sampler_config, create_sampler."""
from modules import sd_samplers_kdiffusion

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
samplers_map = {}
for _s in all_samplers:
    samplers_map[_s.name.lower()] = _s.name
    for _alias in _s.aliases:
        samplers_map[_alias.lower()] = _s.name


def find_sampler_config(name):
    """mirrors sd_samplers.find_sampler_config — None → first sampler; unknown → None."""
    if name is not None:
        return all_samplers_map.get(name, None)
    return all_samplers[0]


def create_sampler(name, model):
    """mirrors sd_samplers.create_sampler."""
    config = find_sampler_config(name)
    assert config is not None, f'bad sampler name: {name}'
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def fix_p_invalid_sampler_and_scheduler(p):
    """Stand-in: unknown sampler names fall back to Euler (the host also splits 'X Karras' names)."""
    if p.sampler_name not in all_samplers_map:
        p.sampler_name = "Euler"
    if p.scheduler is None:
        p.scheduler = "Automatic"
