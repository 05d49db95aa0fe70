"""The double's contract claims (tests/host/double/contract.py), checked on the double itself; the same
claims are checked against the real WebUI by tests/webui/test_host_contract.py."""
import inspect
import types

import pytest
import torch

import contract
import networks
import xyz_grid
from modules import infotext_utils, lowvram, processing, script_callbacks, scripts, sd_models, shared
from pg_host import LayoutRecorder
from tiny_sd import TinySD


def job(runner=None, **kw):
    kw.setdefault("steps", 2)
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, **kw)
    if runner is not None:
        p.script_args = tuple(runner.default_script_args())
    return p


@pytest.mark.parametrize("case", list(contract.LAYOUT_CASES))
def test_row_layouts(host, case):
    kw, options, prompts, step, expected = contract.LAYOUT_CASES[case]
    shared.opts.data.update(options)
    p = job(**kw)
    if prompts:
        p.prompt = prompts
    with LayoutRecorder() as seen:
        processing.process_images(p)
    assert seen.steps[step] == expected


def test_denoiser_params_and_step_counter(host):
    seen = []
    script_callbacks.on_cfg_denoised(lambda params: seen.append(("denoised", sorted(vars(params)))))
    with LayoutRecorder() as rec:
        processing.process_images(job(steps=4, prompt="a cat"))
    assert [sorted(p) for p in rec.params] == [sorted(contract.CFG_DENOISER_PARAMS)] * 4
    assert [p["sampling_step"] for p in rec.params] == contract.sampling_steps_seen(4)
    assert {p["total_sampling_steps"] for p in rec.params} == {4}
    assert seen[0] == ("denoised", sorted(contract.CFG_DENOISED_PARAMS))


class Recorder(scripts.Script):
    def __init__(self, log, fail_in=()):
        self.log, self.fail_in = log, fail_in

    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Checkbox(value=True), gr.Slider(0, 1, value=0.25)]


def _hook(name):
    def hook(self, p, *args, **kwargs):
        self.log.append((name, sorted(kwargs) if name == "process_before_every_sampling" else args[-2:]))
        if name in self.fail_in:
            raise RuntimeError(name)
    return hook


for _name in set(contract.HOOK_ORDER):
    setattr(Recorder, _name, _hook(_name))


def test_hook_order_args_and_errors_reported(host):
    log_a, log_b = [], []
    runner = scripts.ScriptRunner(Recorder(log_a, fail_in=("process",)), Recorder(log_b)).setup_ui()
    a, b = runner.alwayson_scripts
    assert (a.args_from, a.args_to, b.args_from, b.args_to) == (1, 3, 3, 5)
    res = processing.process_images(job(runner, prompt="cat", enable_hr=True, hr_second_pass_steps=1))
    assert tuple(n for n, _ in log_b) == contract.HOOK_ORDER == tuple(n for n, _ in log_a)
    assert log_b[0][1] == (True, 0.25)
    assert dict(log_b)["process_before_every_sampling"] == sorted(contract.BEFORE_SAMPLING_KWARGS)
    assert [(h, str(e)) for h, _, e in scripts.reported] == [("process", "process")]
    assert len(res.images) == 1


def test_p_fields(host):
    p = job(prompt="cat")
    p.setup_prompts()
    p.negative_prompts = p.hr_negative_prompts = p.all_negative_prompts
    p.firstpass_steps = p.steps
    assert [f for f in contract.P_FIELDS if not hasattr(p, f)] == []


def test_lora_objects_and_in_place_merge(host):
    networks.register_network("style", networks.lora_factory(rank=2, seed=1))
    original = {k: v.clone() for k, v in host.state_dict().items()}
    p = job(prompt="cat <lora:style:0.7>")
    processing.process_images(p)
    net = networks.loaded_networks[0]
    assert all(hasattr(net, a) for a in contract.NETWORK_ATTRS)
    assert all(hasattr(net.network_on_disk, a) for a in contract.NETWORK_ON_DISK_ATTRS)
    unet_key = next(k for k in net.modules if k.startswith(contract.UNET_LAYER_PREFIX))
    te_key = next(k for k in net.modules if "transformer" in k[:20])
    module = net.modules[unet_key]
    assert all(hasattr(module, a) for a in contract.LORA_MODULE_ATTRS)
    net.te_multiplier = 0.3
    assert net.modules[te_key].multiplier() == 0.3 and module.multiplier() == 0.7
    layer = module.sd_module
    assert all(hasattr(layer, a) for a in contract.LAYER_ATTRS)
    w0 = layer.network_weights_backup
    up, down = module.up_model.weight.flatten(1), module.down_model.weight.flatten(1)
    torch.testing.assert_close(module.calc_updown(w0)[0], (up @ down).reshape(w0.shape) * module.calc_scale() * 0.7)
    torch.testing.assert_close(layer.weight, w0 + module.calc_updown(w0)[0])
    processing.process_images(job(prompt="cat"))  # no network: every layer restored at its next forward
    assert all(torch.equal(v, original[k]) for k, v in host.state_dict().items())


def test_checkpoint_titles_and_match_rules(host, tmp_path):
    sd_models.save_checkpoint(TinySD(seed=1), str(tmp_path / "ckpt" / "sub" / "base_v2.safetensors"))
    sd_models.save_checkpoint(TinySD(seed=2), str(tmp_path / "ckpt" / "other.safetensors"))
    sd_models.list_models()
    match = sd_models.get_closet_checkpoint_match
    assert all(t.endswith("]") for t in sd_models.checkpoint_tiles()) and len(sd_models.checkpoint_tiles()) == 3
    assert match("base").name == "base.safetensors"  # an id (name without extension)
    assert match("sub/base_v2").name == "sub/base_v2.safetensors"  # no id: the shortest title holding it
    assert match("bas").name == "base.safetensors"
    assert match("base_v2.safetensors [0123456789]").name == "sub/base_v2.safetensors"  # wrong hash stripped
    info = match("other")
    assert match(info.shorthash) is info and match(info.title) is info
    assert match("nothing") is None and match("") is None and match(None) is None


def test_refiner_loads_into_the_same_model_object(host, tmp_path):
    sd_models.save_checkpoint(TinySD(seed=5), str(tmp_path / "ckpt" / "refiner.safetensors"))
    sd_models.list_models()
    loaded, seen = [], []
    script_callbacks.on_model_loaded(loaded.append)
    script_callbacks.on_cfg_denoiser(lambda params: seen.append((id(shared.sd_model), shared.sd_model.sd_checkpoint_info.name)))
    processing.process_images(job(prompt="cat", steps=4, refiner_checkpoint="refiner", refiner_switch_at=0.5))
    assert [n for _, n in seen] == ["base.safetensors"] * 2 + ["refiner.safetensors"] * 2
    assert len({i for i, _ in seen}) == 1 and loaded == [host]


def test_medvram_and_lowvram_both_set_the_lowvram_flag(host):
    for flags in [(True, False), (False, True), (False, False)]:
        shared.cmd_opts.lowvram, shared.cmd_opts.medvram = flags
        lowvram.apply(host)
        assert host.lowvram is any(flags)


def test_infotext_quoting_and_parsing(host):
    p = job(prompt="a photo of a cat")
    p.extra_generation_params.update({"PG omega": 0.5, "PG on": "PG on", "PG base": "my model, v2: final", "PG none": None})
    text = processing.process_images(p).infotexts[0]
    assert 'PG base: "my model, v2: final"' in text and ", PG on," in text and "PG none" not in text
    assert "Negative prompt" not in text  # only written when there is one
    params = infotext_utils.parse_generation_parameters(text)
    assert params["PG omega"] == "0.5" and params["PG base"] == "my model, v2: final" and params["Size-1"] == "64"
    assert params["Prompt"] == "a photo of a cat" and "PG on" not in params


def test_options(host):
    with pytest.raises(AttributeError):
        shared.opts.pg_not_registered
    info = shared.OptionInfo(0.5, "PG", None, None)
    assert info.info("x") is info and info.needs_reload_ui() is info
    shared.opts.add_option("pg_key", info)
    assert shared.opts.pg_key == 0.5
    assert list(inspect.signature(shared.OptionInfo).parameters)[:4] == list(contract.OPTION_INFO_PARAMS)


def test_xyz_axis_option_and_cells(host):
    assert list(inspect.signature(xyz_grid.AxisOption).parameters) == list(contract.AXIS_OPTION_PARAMS)
    p = job()
    seen = []

    def confirm(p, xs):
        if max(xs) > 9:
            raise ValueError(xs)
    opt = xyz_grid.AxisOption("[T] cfg", float, lambda pc, x, xs: seen.append(pc) or setattr(pc, "cfg_scale", x),
                              confirm=confirm)
    with pytest.raises(ValueError):
        xyz_grid.run_grid(p, opt, ["2", "20"])
    assert seen == []  # confirm runs before any cell
    xyz_grid.run_grid(p, opt, ["2", "4"])
    assert [c.cfg_scale for c in seen] == [2.0, 4.0] and p.cfg_scale == 5.0
    assert all(c.extra_generation_params is p.extra_generation_params for c in seen)
