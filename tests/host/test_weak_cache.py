"""The weak conditioning is kept between jobs like the host's cond cache, and only as long as it is valid.

CFG encodes nothing on a job that repeats the last one's prompts (the host's `cached_uc`); PG must not pay a
text-encoder pass at θ_ω per job either (SDXL: CLIP-L and bigG, ~10 % of a small job on CPU), but any change
to what θ_ω or the weak prompts are must encode again.
"""
import sys

import pytest
import torch

from modules import script_callbacks, shared
from pg_host import images, load_pg, pg_module, run

PG = [True, 0.3, "", "negative"]


@pytest.fixture
def runner(host):
    return load_pg()


@pytest.fixture
def weak_encodes(runner, monkeypatch):
    """How many times PG ran the text encoder for its weak branch (calls made from `_encode_weak`)."""
    from modules import prompt_parser

    calls = []
    original = prompt_parser.get_learned_conditioning

    def counted(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_encode_weak":
            calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prompt_parser, "get_learned_conditioning", counted)
    return calls


def test_a_repeated_job_reuses_the_weak_conditioning_and_gives_the_same_image(runner, weak_encodes):
    first, _ = run(runner, PG)
    second, _ = run(runner, PG)
    assert len(weak_encodes) == 1
    assert torch.equal(images(first), images(second))


@pytest.mark.parametrize("change", [
    dict(pg=[True, 0.6, "", "negative"]),                            # ω: another θ_ω
    dict(pg=[True, 0.3, "", "empty"]),                               # other weak prompts
    dict(negative_prompt="grainy"),                                  # other negative prompt
    dict(prompt="a photo of sks cat <lora:subject:0.5>"),            # the LoRA's text-encoder strength
    dict(prompt="a photo of sks cat <lora:subject:1:0.5>"),          # its UNet strength only (the host's key too)
    dict(prompt="a photo of sks cat <lora:subject:1> <lora:style:1>"),  # another network loaded
    dict(width=128),                                                 # size (SDXL's pooled conditioning)
    dict(steps=6),                                                   # prompt-editing schedule
])
def test_any_change_to_theta_omega_or_the_weak_prompts_encodes_again(runner, weak_encodes, change):
    change = dict(change)
    pg = change.pop("pg", PG)
    run(runner, PG)
    changed, _ = run(runner, pg, **change)
    assert len(weak_encodes) == 2
    pg_module().WEAK_CACHE.clear()
    fresh, _ = run(runner, pg, **change)
    assert torch.equal(images(changed), images(fresh))


def test_no_cache_without_persistent_cond_cache_or_after_a_model_load(runner, weak_encodes):
    shared.opts.persistent_cond_cache = False
    run(runner, PG)
    run(runner, PG)
    assert len(weak_encodes) == 2
    shared.opts.persistent_cond_cache = True
    run(runner, PG)
    script_callbacks.model_loaded_callback(shared.sd_model)
    run(runner, PG)
    assert len(weak_encodes) == 4


def test_hires_pass_keys_on_its_own_size_and_steps(runner, weak_encodes):
    run(runner, PG, enable_hr=True, hr_scale=2.0)
    assert len(weak_encodes) == 2  # first pass and hires pass differ in size
    run(runner, PG, enable_hr=True, hr_scale=2.0)
    assert len(weak_encodes) == 2
