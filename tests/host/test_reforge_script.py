"""The entry script with the reForge adapter, on the A1111 double's job loop with reForge's CFG step.

What changes against tests/host/test_script.py: `shared.sd_model` is served as reForge serves it
(forge_objects, patchers of our ldm_patched double), the Lora extension only names the networks and
adds patcher entries, and the CFG step is reForge's (reforge_double/reforge_cfg_denoiser.py: B-row callback,
then sampling_function on the pass's UNet patcher). The reference recomputes every step the slow way:
the selected LoRAs at ω × strength in a patcher chain of their own, the uncond entry run alone.
"""
import sys

import pytest
import torch

import reforge_model  # noqa: F401  (puts the reForge double on sys.path)
from reforge_cfg_denoiser import reforge_cfg_step
from ldm_patched.modules.samplers import calc_cond_batch
from modules import processing, prompt_parser, scripts, sd_samplers, shared
from pg_host import images, load_pg, make_p, pg_module, run
from reforge_model import ReforgeNetworks, ReforgeSD, lora_patches
from test_reforge_adapter import ReforgeModelView
from fork_objects import assert_input_error_is_a_422, hires_prompt_without

from pg_hosts import reforge


@pytest.fixture
def reforge_host(host, monkeypatch):
    import networks as a1111_lora

    a1111_lora.uninstall()  # A1111's Lora extension merges in every layer's forward; reForge's does not
    model = ReforgeSD()
    model.sd_checkpoint_info = host.sd_checkpoint_info
    nets = ReforgeNetworks(model)
    nets.register("subject", lora_patches(model, seed=21, kind="lora"))
    nets.register("style", lora_patches(model, seed=22, kind="loha", only=lambda k: "attn" in k))
    monkeypatch.setattr(shared, "sd_model", model)
    monkeypatch.setitem(sys.modules, "networks", nets)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", reforge_cfg_step)
    # processing.py:283-284: `p.sd_model` is shared.sd_model
    monkeypatch.setattr(processing.StableDiffusionProcessingTxt2Img, "sd_model", property(lambda p: shared.sd_model),
                        raising=False)
    original = scripts.ScriptRunner.process_before_every_sampling

    def reset_then_hook(self, p, **kwargs):  # processing.py:1458 -> 1462 (and 1568 -> 1573 for hires)
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        return original(self, p, **kwargs)
    monkeypatch.setattr(scripts.ScriptRunner, "process_before_every_sampling", reset_then_hook)
    runner = load_pg()
    monkeypatch.setattr(pg_module(), "HOST", reforge)  # detection is tested on its own (test_hosts.py)
    return model, nets, runner


def _slow_reference(model, nets, omega, selected, text_omega=None):
    """CFG step whose uncond comes from a chain with the selected LoRAs at ω × strength (second call).

    `omega` may be a function of the step's fraction done (a schedule, read as PG reads it: the host's
    sampling_step / sampling_steps); `text_omega` is then the ω of the weak prompt's encoding."""
    def chain_at(w):
        chain = [(nets.available[n.name], 1.0, 1.0) for n in nets.loaded_networks]
        return [(pt, su * w, sc * w) if n.name in selected else (pt, su, sc)
                for n, (pt, su, sc) in zip(nets.loaded_networks, chain)]

    def step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        _, text_cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        chain = chain_at(1.0)
        w = omega(shared.state.sampling_step / max(shared.state.sampling_steps, 1)) if callable(omega) else omega
        weak_chain = chain_at(w)
        s = sigma[:, None, None, None]
        x_in, t = x / (s ** 2 + 1) ** 0.5, sigma * 50
        weak = ReforgeModelView(model, weak_chain)
        text_chain = chain if w == 1.0 else chain_at(w if text_omega is None else text_omega)
        with ReforgeModelView(model, text_chain).clip() as clip:
            weak_ctx = clip.cond_stage_model(self.p.negative_prompts)
        with weak.unet() as unet:
            uncond_eps = calc_cond_batch(unet.model, [None, [{"c_crossattn": weak_ctx}]], x_in, t, {})[1]
        with ReforgeModelView(model, chain).unet() as unet:
            cond_eps = calc_cond_batch(unet.model, [[{"c_crossattn": text_cond}], None], x_in, t, {})[0]
        self.step += 1
        return x - (uncond_eps + (cond_eps - uncond_eps) * cond_scale) * s
    return step


def _assert_clean(model):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert model.forge_objects.unet is model.forge_objects_after_applying_lora.unet  # PG's clone is gone


PROMPT = "a photo of sks cat <lora:subject:1> <lora:style:1>"


@pytest.mark.parametrize("omega, field, selected", [(0.0, "", {"subject", "style"}), (0.5, "subject", {"subject"})])
def test_script_in_reforge_matches_the_slow_reference(reforge_host, monkeypatch, omega, field, selected):
    model, nets, runner = reforge_host
    pg, _ = run(runner, {"enabled": True, "omega": omega, "loras": field}, prompt=PROMPT)
    off, _ = run(runner, prompt=PROMPT)
    _assert_clean(model)
    assert "PG omega" in pg.infotexts[0] and "PG note" not in pg.infotexts[0]
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", _slow_reference(model, nets, omega, selected))
    want, _ = run(runner, prompt=PROMPT)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2  # PG changed the image: the comparison can fail


def test_linear_schedule_from_plain_cfg_matches_the_slow_reference_at_each_steps_omega(reforge_host, monkeypatch):
    """ω 1 → 0 over the run: the adapter builds its differences at the lowest ω (at ω = 1 there are none)
    and each step rescales them; LoHa (style) and LoRA (subject) are both affine in their strength."""
    from pg_ext.schedule import OmegaSchedule

    model, nets, runner = reforge_host
    pg, _ = run(runner, {"enabled": True, "omega": 1.0, "schedule": "linear", "omega_end": 0.0}, prompt=PROMPT)
    off, _ = run(runner, prompt=PROMPT)
    _assert_clean(model)
    assert "PG note" not in pg.infotexts[0] and "PG schedule: linear" in pg.infotexts[0]
    schedule = OmegaSchedule("linear", 1.0, 0.0)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__",
                        _slow_reference(model, nets, schedule.omega_at, {"subject", "style"}, schedule.middle()))
    want, _ = run(runner, prompt=PROMPT)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2


def test_omega_one_is_plain_cfg_bit_for_bit(reforge_host):
    model, nets, runner = reforge_host
    pg, _ = run(runner, {"enabled": True, "omega": 1.0}, prompt=PROMPT)
    off, _ = run(runner, prompt=PROMPT)
    assert torch.equal(images(pg), images(off))
    _assert_clean(model)


def test_hires_pass_is_guided_and_leaves_nothing(reforge_host, monkeypatch):
    model, nets, runner = reforge_host
    plans = []
    original = reforge.begin_pass
    monkeypatch.setattr(reforge, "begin_pass", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    pg, _ = run(runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT, enable_hr=True)
    off, _ = run(runner, prompt=PROMPT, enable_hr=True)
    assert len(plans) == 2 and all(plan is not None for plan in plans)  # first pass and hires pass
    assert "PG note" not in pg.infotexts[0]
    assert (images(pg) - images(off)).abs().max() > 1e-2
    _assert_clean(model)


def test_an_error_mid_sampling_reaches_the_caller_and_leaves_nothing(reforge_host, monkeypatch):
    model, nets, runner = reforge_host
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return reforge_cfg_step(self, *args)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run(runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT)
    _assert_clean(model)


@pytest.mark.parametrize("values, field", [({"loras": "nobody"}, "'loras'"),
                                           ({"base_checkpoint": "base"}, "'base_checkpoint'")])
def test_bad_input_is_a_422_naming_the_field_and_the_next_off_image_is_unchanged(reforge_host, values, field):
    model, nets, runner = reforge_host
    off, _ = run(runner, prompt=PROMPT)
    p = make_p(runner, {"enabled": True, "omega": 0.3, **values}, prompt=PROMPT)
    p.is_api = True
    from fastapi import HTTPException
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422 and field in err.value.detail
    _assert_clean(model)
    again, _ = run(runner, prompt=PROMPT)
    assert torch.equal(images(off), images(again))


def test_a_selection_error_of_the_hires_pass_is_a_422_too(reforge_host):
    """The hires prompt loads only 'style': 'subject' is unknown when that pass begins (issue 17 item 7).
    Was a `PG note: off for this pass` and HTTP 200; a 422 as in `_check_selection` now, in every host."""
    model, nets, runner = reforge_host
    off, _ = run(runner, prompt=PROMPT, enable_hr=True)
    with pytest.MonkeyPatch.context() as patch:
        hires_prompt_without(patch, "<lora:subject:1>")
        assert_input_error_is_a_422(runner, model, {"enabled": True, "omega": 0.3, "loras": "subject"}, PROMPT,
                                    "loras", enable_hr=True)
    _assert_clean(model)
    again, _ = run(runner, prompt=PROMPT, enable_hr=True)
    assert torch.equal(images(off), images(again))


def test_dense_differences_are_merged_once_for_a_hires_pass_and_the_next_job(reforge_host, monkeypatch):
    """'style' is a LoHa: its θ' and θ_ω come from the host's merge (issue 17 item 7), once per key and ω."""
    import pg_hosts.patches as patches

    model, nets, runner = reforge_host
    merged = []
    original = patches.dense_difference
    monkeypatch.setattr(patches, "dense_difference", lambda key, *a: merged.append(key) or original(key, *a))
    pg, _ = run(runner, {"enabled": True, "omega": 0.3, "loras": "style"}, prompt=PROMPT, enable_hr=True)
    first = len(merged)
    assert first and len(set(merged)) == first  # each key once, though the job has two passes
    again, _ = run(runner, {"enabled": True, "omega": 0.3, "loras": "style"}, prompt=PROMPT, enable_hr=True)
    assert len(merged) == first and torch.equal(images(pg), images(again))
    run(runner, {"enabled": True, "omega": 0.2, "loras": "style"}, prompt=PROMPT)
    assert len(merged) == 2 * first  # another ω: merged anew
    _assert_clean(model)
