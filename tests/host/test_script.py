"""scripts/personalization_guidance.py on our host double (tests/host/double).

The PG image must equal a slow reference that materializes the weak model the obvious way: the uncond
rows recomputed in a second call with every selected network at ω × its strength (the Lora double
re-merges), and the weak conditioning encoded with the text-encoder multipliers scaled the same way.
"""
import sys
import types

import pytest
import torch

from modules import infotext_utils, processing, script_callbacks, scripts, shared
from pg_host import (FIELDS, pg_module, LayoutRecorder, SlowReference, assert_no_hooks, images, load_pg, make_p, pg_script,
                     run as _run)


@pytest.fixture
def runner(host):
    return load_pg()


def run(runner, pg=None, **kw):
    return _run(runner, pg, **kw)


def test_args_order_and_api_defaults(runner):
    script = pg_script(runner)
    assert script.args_from == 1 and script.args_to - script.args_from == len(FIELDS)
    defaults = runner.default_script_args()[script.args_from:script.args_to]
    assert defaults[0] is False and defaults[1] == 0.5 and defaults[3] == "negative"


def test_omega_one_equals_off_and_writes_infotext(runner):
    off, _ = run(runner)
    one, _ = run(runner, [True, 1.0])
    assert torch.equal(images(off), images(one))
    assert "PG omega: 1.0" in one.infotexts[0] and "PG" not in off.infotexts[0]


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("weak_prompt", ["negative", "empty"])
def test_pg_equals_slow_reference(runner, strength, weak_prompt):
    prompt = f"a photo of sks cat <lora:subject:{strength}>"
    pg, p = run(runner, [True, 0.3, "", weak_prompt], prompt=prompt)
    with SlowReference(0.3, weak_prompt=weak_prompt):
        ref, _ = run(runner, prompt=prompt)
    off, _ = run(runner, prompt=prompt)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-3
    assert_no_hooks()


def test_unselected_network_keeps_full_strength(runner):
    prompt = "a photo of sks cat <lora:subject:1> <lora:style:0.8>"
    pg, _ = run(runner, [{"enabled": True, "omega": 0.2, "loras": "subject"}], prompt=prompt)
    with SlowReference(0.2, selected={"subject"}):
        ref, _ = run(runner, prompt=prompt)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert "PG LoRAs: subject" in pg.infotexts[0]


# -- other extensions, as they change what the UNet sees (written from what they do, for these tests) --

class Tiles:
    """Tiled-Diffusion-like: every call's rows repeated once per tile (tile-major), context repeated."""

    def __enter__(self):
        model = shared.sd_model
        self.original = model.apply_model

        def tiled(x, t, cond):
            halves = x.chunk(2, dim=3)
            c = torch.cat(cond["c_crossattn"])
            out = model.model.diffusion_model(torch.cat(halves), torch.cat([t, t]), context=torch.cat([c, c]))
            return torch.cat(out.chunk(2), dim=3)
        model.apply_model = tiled

    def __exit__(self, *exc):
        del shared.sd_model.apply_model


class HyperTile:
    """HyperTile-like: self-attention runs on each image's tokens split in 2 tiles along the batch, b-major."""

    def __enter__(self):
        self.blocks = [m for m in shared.sd_model.modules() if hasattr(m, "attn1")]
        for block in self.blocks:
            attn = block.attn1

            def tiled(x, context=None, _attn=attn, _forward=type(attn).forward):
                b, n, c = x.shape
                out = _forward(_attn, x.reshape(b * 2, n // 2, c))
                return out.reshape(b, n, c)
            attn.forward = tiled

    def __exit__(self, *exc):
        for block in self.blocks:
            del block.attn1.forward


class ControlNetMarks(scripts.Script):
    """ControlNet-like: marks every conditioning with one extra first token (cond +, uncond -) before
    sampling, and the UNet's own forward strips it, so hooks on the UNet see marked rows."""

    def title(self):
        return "marks"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, c=None, uc=None, **kwargs):
        for schedules, sign in [([s for parts in c.batch for s, _ in parts], 1.0), (uc, -1.0)]:
            for schedule in schedules:
                for entry in schedule:
                    entry.cond = torch.cat([torch.full_like(entry.cond[:1], 100.0 * sign), entry.cond])
        unet = shared.sd_model.model.diffusion_model
        unet.forward = lambda x, t=None, context=None, **kw: type(unet).forward(unet, x, t, context[:, 1:], **kw)

    def postprocess(self, p, processed, *args):
        del shared.sd_model.model.diffusion_model.forward


CASES = {  # case -> (job arguments, options, other extension, the layouts the UNet must have seen)
    "batch2_and": (dict(batch_size=2, prompt="a photo of sks cat AND a red hat <lora:subject:1>"), {}, None, "CCCCUU"),
    "cond_uncond_off": (dict(batch_size=2, prompt=["a cat AND a hat <lora:subject:1>", "sks dog <lora:subject:1>"]),
                        dict(batch_cond_uncond=False), None, "CC|CU|U"),
    "unequal_lengths": (dict(prompt=" ".join(["sks cat"] * 5) + " <lora:subject:1>"), {}, None, "C|U"),
    "unequal_padded": (dict(prompt=" ".join(["sks cat"] * 5) + " <lora:subject:1>"), dict(pad_cond_uncond=True), None, "CU"),
    "ngms": (dict(s_min_uncond=100.0, steps=6), {}, None, "CU"),
    "skip_early": (dict(steps=6), dict(skip_early_cond=0.4), None, "C"),
    "prompt_is_negative": (dict(prompt="blurry <lora:unet_only:1>", batch_size=2), {}, None, "BBBB"),
    "tiled": (dict(batch_size=2), {}, Tiles, "CCUUCCUU"),
    "hypertile": (dict(batch_size=2), {}, HyperTile, "CCUU"),
    "controlnet_marks": (dict(batch_size=2), {}, "marks", "CCUU"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_batching_matches_the_reference(runner, case):
    kw, options, extension, first_layout = CASES[case]
    if extension == "marks":
        runner.alwayson_scripts.append(ControlNetMarks())
        runner.setup_ui()
        extension = None
    shared.opts.data.update(options)
    with (extension or __import__("contextlib").nullcontext)():
        with LayoutRecorder() as seen:
            pg, _ = run(runner, [True, 0.4], **kw)
        with SlowReference(0.4):
            ref, _ = run(runner, **kw)
        plain, _ = run(runner, **kw)
    assert "|".join(seen.steps[0]) == first_layout
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert (images(pg) - images(plain)).abs().max() > 1e-4
    assert "PG note" not in pg.infotexts[0]
    assert_no_hooks()


def test_weights_and_hooks_are_as_before_after_a_failing_job(runner):
    run(runner)
    before = {k: v.clone() for k, v in shared.sd_model.state_dict().items()}
    calls = []

    def explode(module, args):  # an error inside the model call propagates out of sampling
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(runner, [True, 0.2])
    handle.remove()
    assert_no_hooks()
    run(runner)
    after = shared.sd_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_interrupt_ends_the_job_without_leftovers(runner):
    off, _ = run(runner)
    before = {k: v.clone() for k, v in shared.sd_model.state_dict().items()}

    def interrupt(params):
        if params.denoiser.step == 2:
            shared.state.interrupted = True
    script_callbacks.on_cfg_denoised(interrupt)
    try:
        run(runner, [True, 0.2])
    finally:
        script_callbacks.remove_callbacks_for_function(interrupt)
        shared.state.interrupted = False
    assert_no_hooks()
    again, _ = run(runner)
    assert torch.equal(images(off), images(again))
    assert all(torch.equal(before[k], v) for k, v in shared.sd_model.state_dict().items())


@pytest.mark.parametrize("args, field", [
    ([True, 2.0], "omega"), ([True, "x"], "omega"), ([True, 0.3, "nope"], "loras"),
    ([True, 0.3, "", "zz"], "weak_prompt"), ([True, 0.3, "", "negative", 0.6, 0.5], "start"),
    ([{"enabled": True, "omgea": 0.3}], "omgea"), ([True, 0.3, "", "negative", 0.0, 1.0, True, "nothere"], "base_checkpoint"),
])
def test_bad_input_fails_before_sampling_and_names_the_field(runner, args, field):
    off, _ = run(runner)
    from pg_ext.config import SettingsError
    with pytest.raises(SettingsError, match=f"'{field}'"):
        run(runner, args)
    again, _ = run(runner)
    assert torch.equal(images(off), images(again))
    assert_no_hooks()


def test_api_errors_are_http_422(runner):
    from fastapi import HTTPException
    p = make_p(runner, [True, 7], prompt="sks <lora:subject:1>")
    p.is_api = True
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422 and "'omega'" in err.value.detail and "7" in err.value.detail


@pytest.mark.parametrize("host", ["a1111", "reforge", "forge", "forge_neo"])
def test_dreambooth_controls_show_only_where_the_host_supports_them(runner, monkeypatch, host):
    """Every host's adapter has base-checkpoint mode now; one that did not would hide the row, not remove it."""
    import importlib

    adapter = importlib.import_module(f"pg_hosts.{host}") if host != "a1111" else pg_module().HOST
    script = pg_script(runner)
    args_a1111 = len(script.ui(False))
    monkeypatch.setattr(pg_module(), "HOST", adapter)
    script.ui(False)
    assert adapter.SUPPORTS_BASE_CHECKPOINT is True and script.base_row.kwargs["visible"] is True
    monkeypatch.setattr(adapter, "SUPPORTS_BASE_CHECKPOINT", False)
    controls = script.ui(False)
    assert script.base_row.kwargs["visible"] is False
    assert len(controls) == args_a1111  # hidden, not removed: positional API arguments unchanged


def test_a_bad_xyz_value_through_the_api_is_http_422(runner):
    from fastapi import HTTPException
    xyz_grid = next(d.module for d in scripts.scripts_data if d.path.endswith("xyz_grid.py"))
    omega_axis = next(o for o in xyz_grid.axis_options if o.label == "[PG] ω")
    p = make_p(runner, prompt="sks <lora:subject:1>")
    p.is_api = True
    with pytest.raises(HTTPException) as err:
        omega_axis.confirm(p, [0.5, 2.0])
    assert err.value.status_code == 422 and "'omega'" in err.value.detail and "2" in err.value.detail


def test_no_lora_runs_plain_cfg_and_says_so(runner):
    off, _ = run(runner, prompt="a photo of a cat")
    pg, _ = run(runner, [True, 0.3], prompt="a photo of a cat")
    assert torch.equal(images(off), images(pg))
    assert "PG note:" in pg.infotexts[0]


def test_range_outside_is_plain_cfg(runner):
    full, _ = run(runner, [True, 0.2])
    late, _ = run(runner, [True, 0.2, "", "negative", 0.99, 1.0])
    off, _ = run(runner)
    assert not torch.equal(images(full), images(off))
    assert torch.equal(images(late), images(off))


def test_hires_pass_runs_pg_unless_turned_off(runner):
    kw = dict(enable_hr=True, hr_scale=2.0, denoising_strength=0.5, hr_second_pass_steps=2)
    on, _ = run(runner, [True, 0.2], **kw)
    first_only, _ = run(runner, [True, 0.2, "", "negative", 0.0, 1.0, False], **kw)
    assert images(on).shape[-1] == 16
    assert not torch.equal(images(on), images(first_only))
    assert "PG hires: False" in first_only.infotexts[0]


def test_xyz_axes_registered_once_apply_per_cell_and_confirm(runner):
    xyz_grid = next(d.module for d in scripts.scripts_data if d.path.endswith("xyz_grid.py"))
    script_callbacks.before_ui_callback()  # a second before_ui (Reload UI) must not duplicate axes
    labels = [o.label for o in xyz_grid.axis_options if o.label.startswith("[PG]")]
    assert labels.count("[PG] ω") == 1 and "[PG] Base checkpoint" in labels
    omega_axis = next(o for o in xyz_grid.axis_options if o.label == "[PG] ω")
    p = make_p(runner, prompt="sks <lora:subject:1>")
    with pytest.raises(Exception, match="omega"):
        omega_axis.confirm(p, [0.5, 2.0])
    cells = xyz_grid.run_grid(p, omega_axis, ["1.0", "0.3"])
    assert "PG omega: 1.0" in cells[0].infotexts[0] and "PG omega: 0.3" in cells[1].infotexts[0]
    off, _ = run(runner, prompt="sks <lora:subject:1>")
    assert torch.equal(images(cells[0]), images(off))  # the ω = 1 cell is the PG-off image
    assert not hasattr(p, "personalization_guidance")  # cells are copies; nothing leaks back
    assert omega_axis.format_value(p, omega_axis, 0.3) == "PG ω: 0.3"


def test_paste_round_trip_restores_every_control_and_turns_off_without_pg(runner):
    pg, _ = run(runner, [True, 0.35, "subject", "empty", 0.1, 0.9, False])
    script = pg_script(runner)
    values = infotext_utils.paste(pg.infotexts[0], script.infotext_fields)
    by_field = dict(zip(FIELDS, (v.get("value") for v in values)))  # paste fields follow the settings table
    assert by_field["enabled"] is True and float(by_field["omega"]) == 0.35
    assert by_field["loras"] == "subject" and by_field["weak_prompt"] == "empty"
    assert float(by_field["start"]) == 0.1 and float(by_field["end"]) == 0.9 and str(by_field["hires"]) == "False"
    off_values = infotext_utils.paste("a cat\nSteps: 4, Sampler: Euler, CFG scale: 5", script.infotext_fields)
    assert off_values[0].get("value") is False


def test_pg_off_ignores_its_other_values(runner):
    """A disabled PG never breaks a job, e.g. a base checkpoint that was deleted since the UI was built."""
    off, _ = run(runner)
    stale, _ = run(runner, [False, 0.5, "", "negative", 0.0, 1.0, True, "deleted.safetensors [0000000000]"])
    assert torch.equal(images(off), images(stale)) and "PG" not in stale.infotexts[0]
    from pg_ext.config import SettingsError
    with pytest.raises(SettingsError, match="'enabled'"):
        run(runner, ["maybe", 0.5])


def test_cfg_scale_one_is_said_not_silently_ignored(runner):
    """At CFG scale 1 there is no unconditional branch to weaken (issue 18: the DiT presets' default)."""
    pg, _ = run(runner, [True, 0.3], cfg_scale=1.0)
    off, _ = run(runner, cfg_scale=1.0)
    text = pg.infotexts[0]
    assert "PG note: " in text and "CFG scale 1" in text, text
    assert "PG omega" not in text  # PG ran on no step: a paste must not turn it on
    assert torch.equal(images(pg), images(off))
    assert_no_hooks()
