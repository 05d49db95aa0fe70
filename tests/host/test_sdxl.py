"""PG's script on an SDXL-shaped host: dict conditioning {"crossattn", "vector"} (tests/host/double/tiny_sdxl.py).

The LoRA ("subject") touches the UNet (label_emb included) and both text encoders, so the weak branch's
crossattn AND pooled vector must come from the text encoders at ω × strength. The slow reference
re-encodes the negative prompt with the LoRA's multipliers scaled and re-runs the uncond rows in a
second call with the LoRA at ω × strength (the Lora double re-merges the weights).
"""
import pytest
import torch

import contract
from modules import processing, prompt_parser, script_callbacks, sd_models, shared
from pg_host import LayoutRecorder, SlowReference, assert_no_hooks, images, load_pg, run
from tiny_sdxl import CROSSATTN, POOLED, VECTOR, TinySDXL

PROMPT = "a photo of sks cat <lora:subject:0.8>"


@pytest.fixture
def runner(host, tmp_path):
    shared.sd_model = TinySDXL()
    path = str(tmp_path / "ckpt" / "tiny_xl.safetensors")
    sd_models.save_checkpoint(shared.sd_model, path)
    sd_models.list_models()
    shared.sd_model.sd_checkpoint_info = sd_models.get_closet_checkpoint_match("tiny_xl")
    return load_pg()


class HostVector(SlowReference):
    """The reference with one thing wrong: the weak rows keep the host's (full-strength) pooled vector."""

    def on_denoiser(self, params):
        host_vector = params.text_uncond["vector"]
        super().on_denoiser(params)
        params.text_uncond = prompt_parser.DictWithShape({**params.text_uncond, "vector": host_vector})
        self.rows = self.rows[:3] + ({**self.rows[3], "vector": host_vector},)


class UNetCalls:
    """What the UNet receives per call: context and y shapes, y rows."""

    def __init__(self):
        self.calls = []

    def record(self, module, args, kwargs):
        self.calls.append((kwargs["context"].shape, kwargs["y"].clone(), args[0].shape[0]))

    def __enter__(self):
        self.handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(self.record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
def test_the_double_serves_dict_conditioning(runner, batch_cond_uncond):
    """The host facts the PG tests below rely on (contract.SDXL_*), checked on the double."""
    shared.opts.batch_cond_uncond = batch_cond_uncond
    seen, conds = [], []
    script_callbacks.on_cfg_denoiser(lambda params: seen.append((params.text_cond, params.text_uncond)))
    original = shared.sd_model.apply_model
    shared.sd_model.apply_model = lambda x, t, cond: conds.append(tuple(sorted(cond))) or original(x, t, cond)
    try:
        with UNetCalls() as unet:
            run(runner, prompt="a cat AND a hat", negative_prompt="", batch_size=2, steps=2)
    finally:
        del shared.sd_model.apply_model
    text_cond, text_uncond = seen[0]
    for cond, rows in [(text_cond, 4), (text_uncond, 2)]:
        assert tuple(cond) == contract.SDXL_COND_KEYS and type(cond).__name__ == contract.SDXL_COND_TYPE
        assert cond.shape == cond["crossattn"].shape == (rows, 7, CROSSATTN) and cond["vector"].shape == (rows, VECTOR)
    zero = {"crossattn": text_uncond["crossattn"], "vector[:pooled]": text_uncond["vector"][:, :POOLED]}
    assert all(not zero[part].any() for part in contract.SDXL_EMPTY_NEGATIVE_ZERO)
    assert text_uncond["vector"][:, POOLED:].abs().sum() > 0  # the size embeddings are not zeroed
    assert set(conds) == {contract.SDXL_MODEL_COND_KEYS}
    first_step = [6] if batch_cond_uncond else [2, 2, 2]  # 4 cond rows (2 images x 2 subprompts) + 2 uncond rows
    assert [rows for _, _, rows in unet.calls[:len(first_step)]] == first_step
    assert all(context[0] == y.shape[0] == rows and context[2] == CROSSATTN and y.shape[1] == VECTOR
               for context, y, rows in unet.calls)
    assert shared.sd_model.cond_stage_model_empty_prompt.shape == (1, 7, CROSSATTN)
    names = [m.network_layer_name for m in shared.sd_model.conditioner.modules() if hasattr(m, "network_layer_name")]
    assert all(any(n.startswith(prefix) for n in names) for prefix in contract.SDXL_TE_LAYER_PREFIXES)


@pytest.mark.parametrize("case", contract.SDXL_LAYOUT_CASES)
def test_row_layouts_as_sd1(runner, case):
    kw, options, prompts, step, expected = contract.LAYOUT_CASES[case]
    shared.opts.data.update(options)
    p = processing.StableDiffusionProcessingTxt2Img(steps=2, **kw)
    if prompts:
        p.prompt = prompts
    with LayoutRecorder() as seen:
        processing.process_images(p)
    assert seen.steps[step] == expected


def test_omega_one_equals_off(runner):
    off, _ = run(runner, prompt=PROMPT, batch_size=2)
    one, _ = run(runner, [True, 1.0], prompt=PROMPT, batch_size=2)
    assert torch.equal(images(off), images(one))
    assert_no_hooks()


CASES = {  # case -> (job arguments, options, the rows of the first step's UNet calls)
    "batch1": (dict(prompt=PROMPT), {}, "CU"),
    "batch2_and": (dict(batch_size=2, prompt="a photo of sks cat AND a red hat:0.7 <lora:subject:0.8>"), {}, "CCCCUU"),
    "cond_uncond_off": (dict(batch_size=2, prompt=["a cat AND a hat <lora:subject:0.8>", "sks dog <lora:subject:0.8>"]),
                        dict(batch_cond_uncond=False), "CC|CU|U"),
    "unequal_lengths": (dict(prompt=" ".join(["sks cat"] * 5) + " <lora:subject:0.8>"), {}, "C|U"),
    "unequal_padded": (dict(prompt=" ".join(["sks cat"] * 5) + " <lora:subject:0.8>"), dict(pad_cond_uncond=True), "CU"),
    "empty_weak_prompt": (dict(batch_size=2, prompt=PROMPT), {}, "CCUU"),
    "empty_negative": (dict(batch_size=2, prompt=PROMPT, negative_prompt=""), {}, "CCUU"),  # zero crossattn rows
}


@pytest.mark.parametrize("case", list(CASES))
def test_pg_equals_slow_reference(runner, case):
    kw, options, first_layout = CASES[case]
    weak_prompt = "empty" if case == "empty_weak_prompt" else "negative"
    shared.opts.data.update(options)
    plain, _ = run(runner, **kw)
    weights = {k: v.clone() for k, v in shared.sd_model.state_dict().items()}
    with LayoutRecorder() as seen:
        pg, _ = run(runner, [True, 0.5, "", weak_prompt], **kw)
    assert_no_hooks()
    assert all(torch.equal(weights[k], v) for k, v in shared.sd_model.state_dict().items())
    assert "|".join(seen.steps[0]) == first_layout
    assert "PG note" not in pg.infotexts[0]
    with SlowReference(0.5, weak_prompt=weak_prompt):
        ref, _ = run(runner, **kw)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    assert (images(pg) - images(plain)).abs().max() > 1e-3
    if weak_prompt == "negative" and kw.get("negative_prompt") != "":  # it tells a θ_ω vector from the host's
        with HostVector(0.5):
            wrong, _ = run(runner, **kw)
        assert (images(wrong) - images(ref)).abs().max() > 1e-2
