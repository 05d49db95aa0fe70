"""Exact base mode that cannot fit is refused before sampling, naming the memory it needs (issue 8).

The free memory is what the OS reports, so the tests set it: generous (the job runs) and short (the job
is refused with HTTP 422 through the API, nothing read, no hook left, the model unchanged).
"""
import pytest
import torch

from modules import processing, sd_models, shared
from pg_ext import checkpoint
from pg_host import assert_no_hooks, images, load_pg, make_p, pg_module, run
from tiny_sd import TinySD

BASE = [True, 0.5, "", "negative", 0.0, 1.0, True, "sd15", "exact"]


@pytest.fixture
def runner(host, tmp_path):
    runner = load_pg()
    sd_models.save_checkpoint(TinySD(seed=7), str(tmp_path / "ckpt" / "sd15.safetensors"))
    sd_models.list_models()
    shared.opts.pg_base_cache_size = 0
    return runner


def _free_ram(monkeypatch, nbytes):
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: nbytes)


def test_exact_mode_runs_when_its_memory_is_free(runner, monkeypatch):
    _free_ram(monkeypatch, 64 * checkpoint.GIB)
    res, _ = run(runner, BASE, prompt="a photo of sks cat")
    assert "PG base mode: exact" in res.infotexts[0] and "PG note" not in res.infotexts[0]


@pytest.mark.parametrize("api", [True, False])
def test_exact_mode_that_cannot_fit_is_refused_before_sampling(runner, monkeypatch, api):
    off, _ = run(runner, prompt="a photo of sks cat")
    before = {k: v.clone() for k, v in shared.sd_model.state_dict().items()}
    unet_bytes = sum(p.numel() * p.element_size() for p in shared.sd_model.model.diffusion_model.parameters())
    _free_ram(monkeypatch, unet_bytes)  # room for the differences, not also for θ_ω on the (CPU) device
    module = pg_module()
    reads = []
    monkeypatch.setattr(module, "read_unet_tensors", lambda path: reads.append(path) or iter(()))
    p = make_p(runner, BASE, prompt="a photo of sks cat")
    p.is_api = api
    from fastapi import HTTPException
    from pg_ext.config import SettingsError

    with pytest.raises(HTTPException if api else SettingsError) as err:
        processing.process_images(p)
    message = err.value.detail if api else str(err.value)
    assert "'base_mode'" in message and "GiB of RAM" in message and "low-memory" in message, message
    assert reads == []  # refused before reading the base, i.e. before sampling
    assert_no_hooks()
    assert all(torch.equal(before[k], v) for k, v in shared.sd_model.state_dict().items())
    again, _ = run(runner, prompt="a photo of sks cat")
    assert torch.equal(images(off), images(again))


def test_low_memory_mode_is_not_refused(runner, monkeypatch):
    _free_ram(monkeypatch, 1)
    res, _ = run(runner, BASE[:-1] + ["low-memory"], prompt="a photo of sks cat")
    assert "PG base mode: low-memory" in res.infotexts[0]
