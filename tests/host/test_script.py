"""scripts/personalization_guidance.py against the A1111 v1.10.1 stand-in (tests/host/standin).

The PG image must equal a slow reference that materializes the weak model the obvious way: the uncond
rows recomputed in a second call with every selected network at ω × its strength (the Lora extension
re-merges), and the weak conditioning encoded with the text-encoder multipliers scaled the same way.
"""
import os
import sys

import pytest
import torch

from modules import processing, prompt_parser, script_callbacks, scripts, shared
from modules.infotext_utils import paste_values  # stand-in helper: the UI's paste step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "personalization_guidance.py")
XYZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin", "xyz_grid.py")
FIELDS = ["enabled", "omega", "loras", "weak_prompt", "start", "end", "hires", "base_checkpoint", "base_mode"]


@pytest.fixture
def host(lora_host, standin_host):
    """Stand-in host with the PG script and X/Y/Z loaded and the UI built (settings, axes, paste fields)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    scripts.load_scripts([XYZ, SCRIPT])
    script_callbacks.before_ui_callback()
    script_callbacks.ui_settings_callback()
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(False)
    runner.prepare_ui()
    runner.setup_ui()
    lora_host.register_network("subject", kind="lora", rank=4, seed=1, std=0.3)
    lora_host.register_network("style", kind="loha", rank=2, seed=2, std=0.3)
    yield standin_host, runner
    script_callbacks.clear_callbacks()


def pg_script(runner):
    return next(s for s in runner.alwayson_scripts if s.title() == "Personalization Guidance")


def run(host, pg=None, **kw):
    standin, runner = host
    args = list(runner.default_script_args())
    script = pg_script(runner)
    if pg is not None:
        values = pg if isinstance(pg, list) else [pg]
        args[script.args_from:script.args_from + len(values)] = values
    kw.setdefault("prompt", "a photo of sks cat <lora:subject:1>")
    kw.setdefault("negative_prompt", "blurry")
    p = standin.make_txt2img(runner, script_args=args, **kw)
    return processing.process_images(p), p


class SlowReference:
    """The weak branch recomputed in a second call with the networks at ω × strength (test-only)."""

    def __init__(self, omega, selected=None, weak_prompt="negative"):
        self.omega, self.selected, self.weak_prompt = omega, selected, weak_prompt
        self.saved = None

    def scaled(self):
        import networks
        return [n for n in networks.loaded_networks if self.selected is None or n.name in self.selected]

    def __enter__(self):
        script_callbacks.on_cfg_denoiser(self.on_denoiser)
        script_callbacks.on_cfg_denoised(self.on_denoised)
        return self

    def __exit__(self, *exc):
        script_callbacks.remove_callbacks_for_function(self.on_denoiser)
        script_callbacks.remove_callbacks_for_function(self.on_denoised)

    def with_scale(self, fn, te=False):
        nets = self.scaled()
        saved = [(n.te_multiplier, n.unet_multiplier) for n in nets]
        try:
            for n in nets:
                n.te_multiplier, n.unet_multiplier = (n.te_multiplier * self.omega if te else n.te_multiplier,
                                                      n.unet_multiplier * self.omega)
            return fn()
        finally:
            for n, (te_m, unet_m) in zip(nets, saved):
                n.te_multiplier, n.unet_multiplier = te_m, unet_m

    def on_denoiser(self, params):
        p = params.denoiser.p
        prompts = list(p.negative_prompts) if self.weak_prompt == "negative" else [""] * len(p.negative_prompts)
        weak = self.with_scale(lambda: prompt_parser.get_learned_conditioning(
            shared.sd_model, prompt_parser.SdConditioning(prompts, width=p.width, height=p.height, is_negative_prompt=True),
            p.firstpass_steps), te=True)
        params.text_uncond = prompt_parser.reconstruct_cond_batch(weak, params.denoiser.step)
        b = params.text_uncond.shape[0]
        self.rows = (params.x[-b:].clone(), params.sigma[-b:].clone(), params.image_cond[-b:].clone(), params.text_uncond)

    def on_denoised(self, params):
        x, sigma, image_cond, uncond = self.rows
        out = self.with_scale(lambda: params.inner_model(x, sigma, cond={"c_crossattn": [uncond], "c_concat": [image_cond]}))
        params.x[-x.shape[0]:] = out


def images(res):
    return torch.stack([torch.as_tensor(i) for i in res.images])


def assert_no_hooks():
    for module in shared.sd_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__


def test_args_order_and_api_defaults(host):
    standin, runner = host
    script = pg_script(runner)
    assert script.args_to - script.args_from == len(FIELDS)
    defaults = runner.default_script_args()[script.args_from:script.args_to]
    assert defaults[0] is False and defaults[1] == 0.5 and defaults[3] == "negative"


def test_omega_one_equals_off_and_writes_infotext(host):
    off, _ = run(host)
    one, _ = run(host, [True, 1.0])
    assert torch.equal(images(off), images(one))
    assert "PG omega: 1.0" in one.infotexts[0] and "PG" not in off.infotexts[0]


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("weak_prompt", ["negative", "empty"])
def test_pg_equals_slow_reference(host, strength, weak_prompt):
    prompt = f"a photo of sks cat <lora:subject:{strength}>"
    pg, p = run(host, [True, 0.3, "", weak_prompt], prompt=prompt)
    with SlowReference(0.3, weak_prompt=weak_prompt):
        ref, _ = run(host, prompt=prompt)
    off, _ = run(host, prompt=prompt)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-3
    assert_no_hooks()


def test_unselected_network_keeps_full_strength(host):
    prompt = "a photo of sks cat <lora:subject:1> <lora:style:0.8>"
    pg, _ = run(host, [{"enabled": True, "omega": 0.2, "loras": "subject"}], prompt=prompt)
    with SlowReference(0.2, selected={"subject"}):
        ref, _ = run(host, prompt=prompt)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert "PG LoRAs: subject" in pg.infotexts[0]


@pytest.mark.parametrize("case", ["batch2_and", "cond_uncond_off", "unequal_lengths", "ngms"])
def test_every_batching_matches_the_reference(host, case):
    kw = dict(prompt="a photo of sks cat <lora:subject:1>", negative_prompt="blurry")
    if case == "batch2_and":
        kw.update(batch_size=2, prompt="a photo of sks cat AND a red hat <lora:subject:1>")
    elif case == "cond_uncond_off":
        shared.opts.batch_cond_uncond = False
        kw.update(batch_size=2, prompt="a cat AND a hat AND sks <lora:subject:1>")
    elif case == "unequal_lengths":
        kw.update(prompt=" ".join(["sks cat"] * 60) + " <lora:subject:1>")
    else:
        kw.update(s_min_uncond=100.0, steps=6)
    try:
        pg, _ = run(host, [True, 0.4], **kw)
        with SlowReference(0.4):
            ref, _ = run(host, **kw)
    finally:
        shared.opts.batch_cond_uncond = True
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)


def test_weights_and_hooks_are_as_before_after_a_failing_job(host):
    run(host)
    before = {k: v.clone() for k, v in shared.sd_model.state_dict().items()}

    calls = []

    def explode(module, args):  # an error inside the model call propagates out of sampling
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(host, [True, 0.2])
    handle.remove()
    assert_no_hooks()
    run(host)
    after = shared.sd_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("args, field", [
    ([True, 2.0], "omega"), ([True, "x"], "omega"), ([True, 0.3, "nope"], "loras"),
    ([True, 0.3, "", "zz"], "weak_prompt"), ([True, 0.3, "", "negative", 0.6, 0.5], "start"),
    ([{"enabled": True, "omgea": 0.3}], "omgea"), ([True, 0.3, "", "negative", 0.0, 1.0, True, "nothere"], "base_checkpoint"),
])
def test_bad_input_fails_before_sampling_and_names_the_field(host, args, field):
    off, _ = run(host)
    from pg_ext.config import SettingsError
    with pytest.raises(SettingsError, match=f"'{field}'"):
        run(host, args)
    again, _ = run(host)
    assert torch.equal(images(off), images(again))
    assert_no_hooks()


def test_api_errors_are_http_422(host, monkeypatch):
    import types

    class HTTPException(Exception):  # fastapi.HTTPException(status_code, detail) as the host's API uses it
        def __init__(self, status_code, detail=None):
            super().__init__(detail)
            self.status_code, self.detail = status_code, detail

    monkeypatch.setitem(sys.modules, "fastapi", types.SimpleNamespace(HTTPException=HTTPException))
    standin, runner = host
    args = list(runner.default_script_args())
    start = pg_script(runner).args_from
    args[start:start + 2] = [True, 7]
    p = standin.make_txt2img(runner, script_args=args, prompt="sks <lora:subject:1>")
    p.is_api = True
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422 and "'omega'" in err.value.detail and "7" in err.value.detail


def test_no_lora_runs_plain_cfg_and_says_so(host):
    off, _ = run(host, prompt="a photo of a cat")
    pg, _ = run(host, [True, 0.3], prompt="a photo of a cat")
    assert torch.equal(images(off), images(pg))
    assert "PG note:" in pg.infotexts[0]


def test_range_outside_is_plain_cfg(host):
    full, _ = run(host, [True, 0.2])
    late, _ = run(host, [True, 0.2, "", "negative", 0.99, 1.0])
    off, _ = run(host)
    assert not torch.equal(images(full), images(off))
    assert torch.equal(images(late), images(off))


def test_hires_pass_runs_pg_unless_turned_off(host):
    kw = dict(enable_hr=True, hr_scale=2.0, denoising_strength=0.5, hr_second_pass_steps=2)
    on, _ = run(host, [True, 0.2], **kw)
    first_only, _ = run(host, [True, 0.2, "", "negative", 0.0, 1.0, False], **kw)
    assert not torch.equal(images(on), images(first_only))
    assert "PG hires: False" in first_only.infotexts[0]


def test_xyz_axes_registered_once_apply_per_cell_and_confirm(host):
    xyz_grid = next(d.module for d in scripts.scripts_data if os.path.basename(d.path) == "xyz_grid.py")
    script_callbacks.before_ui_callback()  # a second before_ui (Reload UI) must not duplicate axes
    labels = [o.label for o in xyz_grid.axis_options if o.label.startswith("[PG]")]
    assert labels.count("[PG] ω") == 1 and "[PG] Base checkpoint" in labels
    omega_axis = next(o for o in xyz_grid.axis_options if o.label == "[PG] ω")
    standin, runner = host
    p = standin.make_txt2img(runner, prompt="sks <lora:subject:1>", negative_prompt="blurry")
    with pytest.raises(Exception, match="omega"):
        omega_axis.confirm(p, [0.5, 2.0])
    cells = xyz_grid.run_grid(p, omega_axis, [1.0, 0.3])
    assert "PG omega: 1.0" in cells[0].infotexts[0] and "PG omega: 0.3" in cells[1].infotexts[0]
    off, _ = run(host, prompt="sks <lora:subject:1>", negative_prompt="blurry")
    assert torch.equal(images(cells[0]), images(off))  # the ω = 1 cell is the PG-off image
    assert not hasattr(p, "personalization_guidance")  # cells are copies; nothing leaks back
    assert omega_axis.format_value(p, omega_axis, 0.3) == "PG ω: 0.3"


def test_paste_round_trip_restores_every_control_and_turns_off_without_pg(host):
    pg, _ = run(host, [True, 0.35, "subject", "empty", 0.1, 0.9, False])
    script = pg_script(host[1])
    values = paste_values(pg.infotexts[0], script.infotext_fields)
    by_field = dict(zip(FIELDS, (v.get("value") for v in values)))  # paste fields follow the settings table
    assert by_field["enabled"] is True and float(by_field["omega"]) == 0.35
    assert by_field["loras"] == "subject" and by_field["weak_prompt"] == "empty"
    assert float(by_field["start"]) == 0.1 and float(by_field["end"]) == 0.9 and str(by_field["hires"]) == "False"
    off_values = paste_values("a cat\nSteps: 4, Sampler: Euler, CFG scale: 5", script.infotext_fields)
    assert off_values[0].get("value") is False


def test_pg_off_ignores_its_other_values(host):
    """A disabled PG never breaks a job, e.g. a base checkpoint that was deleted since the UI was built."""
    off, _ = run(host)
    stale, _ = run(host, [False, 0.5, "", "negative", 0.0, 1.0, True, "deleted.safetensors [0000000000]"])
    assert torch.equal(images(off), images(stale)) and "PG" not in stale.infotexts[0]
    from pg_ext.config import SettingsError
    with pytest.raises(SettingsError, match="'enabled'"):
        run(host, ["maybe", 0.5])
