"""Checks that the A1111 v1.10.1 stand-in (tests/host/standin) behaves like the host where the extension depends on it."""
import torch

from modules import errors, infotext_utils, processing, prompt_parser, script_callbacks, scripts, sd_models, sd_samplers, shared


class RecordingModel(torch.nn.Module):
    """Replaces the k-diffusion wrapper: records each call; output row = x row + mean of its cond row."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, sigma, cond):
        c = cond["c_crossattn"][0]
        self.calls.append({"x": x.clone(), "sigma": sigma.clone(), "c": c.clone()})
        return x + c.mean(dim=(1, 2))[:, None, None, None]


def make_denoiser(p, steps=4):
    sampler = sd_samplers.create_sampler("Euler", shared.sd_model)
    den = sampler.model_wrap_cfg
    den.model_wrap = RecordingModel()
    den.p = p
    den.step = 0
    den.total_steps = steps
    return sampler, den


def conds(prompts, negatives, steps=4):
    c = prompt_parser.get_multicond_learned_conditioning(shared.sd_model, prompts, steps)
    uc = prompt_parser.get_learned_conditioning(shared.sd_model, negatives, steps)
    return c, uc


def run_forward(den, c, uc, B, sigma=1.0, cond_scale=7.0, s_min_uncond=0.0):
    x = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, den(x, torch.full((B,), sigma), uc, c, cond_scale, s_min_uncond, torch.zeros(B, 5, 1, 1))


def test_row_layout_batch2_with_and_prompt(standin_host):
    p = standin_host.make_txt2img()
    _, den = make_denoiser(p)
    c, uc = conds(["red AND blue:0.5", "green AND blue:0.5"], ["", ""])
    seen = {}

    def on_denoiser(params):
        seen.update(x=params.x.clone(), cond=params.text_cond.clone(), uncond=params.text_uncond.clone())
    script_callbacks.on_cfg_denoiser(on_denoiser)

    x, out = run_forward(den, c, uc, B=2)
    # rows: [x0·red, x0·blue, x1·green, x1·blue, x0·u, x1·u]
    assert torch.equal(seen["x"], torch.stack([x[0], x[0], x[1], x[1], x[0], x[1]]))
    enc = shared.sd_model.get_learned_conditioning
    assert torch.allclose(seen["cond"], torch.cat([enc(["red "]), enc(["blue"]), enc(["green "]), enc(["blue"])]), atol=1e-6)
    assert seen["uncond"].shape[0] == 2
    assert len(den.model_wrap.calls) == 1 and den.model_wrap.calls[0]["x"].shape[0] == 6  # batch_cond_uncond: one call
    rows = den.model_wrap(seen["x"], torch.ones(6), {"c_crossattn": [torch.cat([seen["cond"], seen["uncond"]])]})
    expected0 = rows[4] + 7.0 * ((rows[0] - rows[4]) * 1.0 + (rows[1] - rows[4]) * 0.5)
    assert torch.allclose(out[0], expected0, atol=1e-5)


def test_batch_cond_uncond_off_chunks_can_mix_cond_and_uncond(standin_host):
    shared.opts.batch_cond_uncond = False
    p = standin_host.make_txt2img()
    _, den = make_denoiser(p)
    c, uc = conds(["red AND blue", "green"], ["", ""])  # R = 3 cond rows, then 2 uncond rows
    x, _ = run_forward(den, c, uc, B=2)
    sizes = [call["x"].shape[0] for call in den.model_wrap.calls]
    assert sizes == [2, 2, 1]
    mixed = den.model_wrap.calls[1]
    assert torch.equal(mixed["x"], torch.stack([x[1], x[0]]))  # cond row of image 1 + uncond row of image 0


def test_unequal_token_lengths_give_separate_uncond_call(standin_host):
    p = standin_host.make_txt2img()
    _, den = make_denoiser(p)
    long_prompt = "one two three four five six seven eight"  # 8 words → 2 chunks → 16 tokens
    c, uc = conds([long_prompt, long_prompt], ["", ""])
    run_forward(den, c, uc, B=2)
    calls = den.model_wrap.calls
    assert [(k["x"].shape[0], k["c"].shape[1]) for k in calls] == [(2, 16), (2, 8)]
    shared.opts.pad_cond_uncond = True  # padding makes it one call again
    _, den2 = make_denoiser(p)
    run_forward(den2, c, uc, B=2)
    assert [(k["x"].shape[0], k["c"].shape[1]) for k in den2.model_wrap.calls] == [(4, 16)]
    assert den2.padded_cond_uncond


def test_ngms_skips_uncond_on_odd_steps_and_fakes_rows(standin_host):
    p = standin_host.make_txt2img()
    _, den = make_denoiser(p)
    c, uc = conds(["red", "green"], ["", ""])
    outs = []
    script_callbacks.on_cfg_denoised(lambda params: outs.append(params.x.clone()))
    run_forward(den, c, uc, B=2, s_min_uncond=100.0)  # step 0: even → not skipped
    x, out = run_forward(den, c, uc, B=2, s_min_uncond=100.0)  # step 1: odd → skipped
    assert [k["x"].shape[0] for k in den.model_wrap.calls] == [4, 2]
    assert p.extra_generation_params["NGMS"] == 100.0
    assert torch.equal(outs[1][2:], outs[1][:2])  # fake uncond rows are copies of each image's first cond row
    assert torch.allclose(out, outs[1][:2])  # combined with cond_scale 1.0 → the cond prediction


def test_cfg_denoised_params_x_is_not_read_back(standin_host):
    p = standin_host.make_txt2img()
    _, den = make_denoiser(p)
    c, uc = conds(["red"], [""])
    script_callbacks.on_cfg_denoised(lambda params: setattr(params, "x", params.x * 0))  # reassignment: ignored
    _, out_a = run_forward(den, c, uc, B=1)
    script_callbacks.clear_callbacks()
    den.step = 0
    _, out_b = run_forward(den, c, uc, B=1)
    assert torch.equal(out_a, out_b)


def test_lora_in_place_merge_restores_exactly(lora_host):
    sd_model = shared.sd_model
    layer_k = "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    lora_host.register_network("style", kind="lora", rank=2, seed=1, alpha=1.0)
    lora_host.register_network("dense", kind="loha", rank=2, seed=2)
    lora_host.register_network("full", kind="full", seed=3, targets=["diffusion_model_input_blocks_1_1_norm", layer_k])
    original = {k: v.clone() for k, v in sd_model.state_dict().items()}
    lora_host.load_networks(["style", "dense", "full"], [1.0, 1.0, 1.0], [0.7, 1.0, 0.5], [None, None, None])

    layer = sd_model.network_layer_mapping[layer_k]
    w0 = layer.weight.clone()
    deltas = [net.modules[layer_k].calc_updown(w0)[0] for net in lora_host.loaded_networks]
    cond = sd_model.get_learned_conditioning(["a"])  # TE forward merges TE layers
    sd_model.apply_model(torch.zeros(1, 4, 8, 8), torch.tensor([10.0]), cond)
    assert torch.allclose(layer.weight, w0 + sum(deltas), atol=1e-6)
    assert torch.equal(layer.network_weights_backup, w0)
    style = lora_host.loaded_networks[0].modules[layer_k]
    assert torch.allclose(deltas[0], style.up_model.weight @ style.down_model.weight * (1.0 / 2) * 0.7, atol=1e-6)
    norm = sd_model.network_layer_mapping["diffusion_model_input_blocks_1_1_norm"]
    assert not torch.equal(norm.bias, original["model.diffusion_model.input_blocks.1.1.norm.bias"])

    lora_host.load_networks([], [], [], [])
    assert not torch.equal(layer.weight, w0)  # restoring is lazy: happens at the layer's next forward
    sd_model.get_learned_conditioning(["a"])
    sd_model.apply_model(torch.zeros(1, 4, 8, 8), torch.tensor([10.0]), cond)
    for k, v in sd_model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_get_closet_checkpoint_match_rules(standin_host, tmp_path):
    ckpt = tmp_path / "ckpt"
    from modules.standin_model import StandinSdModel
    standin_host.save_checkpoint(StandinSdModel(seed=1), str(ckpt / "sub" / "base_v2.safetensors"))  # distinct content → distinct hashes
    standin_host.save_checkpoint(StandinSdModel(seed=2), str(ckpt / "other.safetensors"))
    sd_models.list_models()
    titles = sd_models.checkpoint_tiles()
    assert len(titles) == 3 and all(t.endswith("]") for t in titles)
    match = sd_models.get_closet_checkpoint_match
    assert match("base").name == "base.safetensors"  # exact alias (name_for_extra)
    assert match("sub/base_v2").name == "sub/base_v2.safetensors"  # not an alias (model_name is sub_base_v2) → substring of the title
    assert match("bas").name == "base.safetensors"  # substring: shortest title wins
    assert match("base_v2.safetensors [0123456789]").name == "sub/base_v2.safetensors"  # wrong hash stripped
    info = match("other")
    assert match(info.shorthash) is info and match(info.title) is info
    assert info.hash == match("base").hash  # the old hash reads 64 KiB at 1 MiB: every small file hashes alike (host too)
    assert match("nothing") is None and match("") is None and match(None) is None
    sd = sd_models.read_state_dict(info.filename, map_location="cpu")
    assert "model.diffusion_model.out.2.weight" in sd


class Recorder(scripts.Script):
    def __init__(self, log, fail_in=()):
        self.log, self.fail_in = log, fail_in

    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Checkbox(value=True, label="on"), gr.Slider(0, 1, value=0.25, label="w")]

    def _rec(self, name, args):
        self.log.append((name, args))
        if name in self.fail_in:
            raise RuntimeError(name)

    def setup(self, p, *args):
        self._rec("setup", args)

    def before_process(self, p, *args):
        self._rec("before_process", args)

    def process(self, p, *args):
        self._rec("process", args)

    def before_process_batch(self, p, *args, **kw):
        self._rec("before_process_batch", sorted(kw))

    def after_extra_networks_activate(self, p, *args, **kw):
        import networks
        self._rec("after_extra_networks_activate", [n.name for n in networks.loaded_networks])

    def process_batch(self, p, *args, **kw):
        self._rec("process_batch", sorted(kw))

    def process_before_every_sampling(self, p, *args, **kw):
        self._rec("process_before_every_sampling", (p.is_hr_pass, sorted(kw)))

    def before_hr(self, p, *args):
        self._rec("before_hr", args)

    def post_sample(self, p, ps, *args):
        self._rec("post_sample", args)

    def postprocess_batch(self, p, *args, **kw):
        self._rec("postprocess_batch", sorted(kw))

    def postprocess(self, p, processed, *args):
        self._rec("postprocess", len(processed.images))


def test_hook_order_args_and_error_isolation(lora_host, standin_host):
    lora_host.register_network("style", seed=1)
    log_a, log_b = [], []
    runner = standin_host.make_runner(Recorder(log_a, fail_in=("process",)), Recorder(log_b))
    a, b = runner.alwayson_scripts
    assert (a.args_from, a.args_to, b.args_from, b.args_to) == (1, 3, 3, 5)
    p = standin_host.make_txt2img(runner, prompt="cat <lora:style:0.5>", enable_hr=True, hr_scale=2.0, denoising_strength=0.5)
    res = processing.process_images(p)
    names = [n for n, _ in log_b]
    assert names == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                     "process_batch", "process_before_every_sampling", "after_extra_networks_activate", "before_hr",
                     "process_before_every_sampling", "post_sample", "postprocess_batch", "postprocess"]
    assert log_b[0][1] == (True, 0.25)
    assert dict(log_b)["process_before_every_sampling"] == (True, ["c", "noise", "uc", "x"])
    assert log_b[4][1] == ["style"]
    assert [n for n, _ in log_a] == names  # A's process() raised: reported, and everything went on
    assert any(isinstance(e, RuntimeError) and str(e) == "process" for e in errors.exception_records)
    assert res.images[0].shape == (3, 128, 128) and "Lora hashes" in res.infotexts[0]


def test_infotext_round_trip_uses_host_quoting(standin_host):
    p = standin_host.make_txt2img()
    p.extra_generation_params.update({"PG omega": 0.5, "PG base": "my model, v2: final", "PG on": "PG on", "PG none": None})
    res = processing.process_images(p)
    text = res.infotexts[0]
    assert 'PG base: "my model, v2: final"' in text and ", PG on," in text and "PG none" not in text
    params = infotext_utils.parse_generation_parameters(text)
    assert params["PG omega"] == "0.5" and params["PG base"] == "my model, v2: final" and params["Size-1"] == "64"
    assert params["Prompt"] == "a photo of a cat"
    assert "PG on" not in params  # a bare key (key == value) does not parse back as a key


def test_options_behave_like_host(standin_host):
    import pytest
    with pytest.raises(AttributeError):
        shared.opts.pg_not_registered
    shared.opts.add_option("pg_key", shared.OptionInfo(0.5, "PG", section=("pg", "PG")))
    assert shared.opts.pg_key == 0.5 and shared.opts.data["pg_key"] == 0.5
    called = []
    shared.opts.onchange("pg_key", lambda: called.append(1))
    assert called == [1] and shared.opts.set("pg_key", 0.7) and called == [1, 1]


def test_xyz_run_grid_confirms_first_and_shares_extra_params(standin_host):
    import pytest
    import xyz_grid
    p = standin_host.make_txt2img()
    opt = xyz_grid.AxisOption("[T] cfg", float, xyz_grid.apply_field("cfg_scale"), confirm=xyz_grid.confirm_range(1.0, 9.0, "[T] cfg"))
    with pytest.raises(ValueError):
        xyz_grid.run_grid(p, opt, ["2", "20"])  # confirm runs before any cell
    results = xyz_grid.run_grid(p, opt, ["2", "4"])
    assert [r.cfg_scale for r in results] == [2.0, 4.0] and p.cfg_scale == 5.0  # cells are shallow copies
    p.extra_generation_params["X"] = 1
    cell = xyz_grid.run_grid(p, opt, ["3"])[0]
    assert cell.extra_generation_params is p.extra_generation_params  # the dict is shared by all cells
