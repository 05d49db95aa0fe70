"""The entry script with the Forge adapter, on the A1111 double's job loop with Forge's CFG step
(forge_double/forge_cfg_denoiser.py); LoRAs exist only as `lora_patches` by file. Reference: the selected
LoRAs at ω × strength in patchers of their own, the uncond entry run alone, every step.
"""
import sys
import types

import pytest
import torch

import test_forge_adapter as fa  # noqa: F401  (puts the Forge double on sys.path)
from backend.operations import as_forge_linears
from backend.patcher.base import ModelPatcher
from backend.modules.k_model import KModel
from backend.sampling.sampling_function import calc_cond_uncond_batch
from forge_cfg_denoiser import forge_cfg_step
from modules import processing, prompt_parser, scripts, sd_samplers, shared
from pg_host import images, load_pg, pg_module, run
from fork_objects import CLIP, ForgeObjects, assert_input_error_is_a_422, hires_prompt_without
from tiny_sd import DIM, TextEncoder
from tiny_unet import TinyUNet

from pg_hosts import forge

PROMPT = "a photo of sks cat <lora:subject:1> <lora:style:1>"
FILES = {"subject": "/loras/subject.safetensors", "style": "/loras/style.safetensors"}


class ForgeSD(fa.ForgeModel):
    def __init__(self):
        torch.manual_seed(0)
        unet = as_forge_linears(TinyUNet(16, DIM)).requires_grad_(False)
        text = as_forge_linears(TextEncoder()).requires_grad_(False)
        self.forge_objects = ForgeObjects(ModelPatcher(KModel(unet)), CLIP(text, ModelPatcher(text)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.lowvram, self.sd_checkpoint_info = False, None

    def get_learned_conditioning(self, texts):
        clip = self.forge_objects.clip
        clip.patcher.load()  # sd15.py:64-65 loads the CLIP patcher (merging its LoRAs) before encoding
        return clip.cond_stage_model(texts)


class ForgeNetworks:
    def __init__(self, model):
        self.model, self.available, self.loaded_networks, self.strengths = model, {}, [], []

    def activate(self, p, found):
        """networks.py:68-126: names in loaded_networks, patches by file on fresh clones, in order."""
        self.loaded_networks = [types.SimpleNamespace(name=n, mentioned_name=n,
                                                      network_on_disk=types.SimpleNamespace(filename=FILES[n]))
                                for n, _ in found]
        self.strengths = [float(args[0]) if args else 1.0 for _, args in found]
        self.model.apply_loras([(FILES[n], self.available[n], s) for (n, _), s in zip(found, self.strengths)])


@pytest.fixture
def forge_host(host, monkeypatch):
    import networks as a1111_lora

    a1111_lora.uninstall()
    model = ForgeSD()
    model.sd_checkpoint_info = host.sd_checkpoint_info
    nets = ForgeNetworks(model)
    nets.available = {"subject": fa.patches(model, 21, "lora"),
                      "style": fa.patches(model, 22, "loha", only=lambda k: "attn" in k)}
    monkeypatch.setattr(shared, "sd_model", model)
    monkeypatch.setitem(sys.modules, "networks", nets)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", forge_cfg_step)
    monkeypatch.setattr(processing.StableDiffusionProcessingTxt2Img, "sd_model", property(lambda p: shared.sd_model),
                        raising=False)  # processing.py:263-264
    original = scripts.ScriptRunner.process_before_every_sampling

    def reset_then_hook(self, p, **kwargs):  # processing.py:1373 -> 1377
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        return original(self, p, **kwargs)
    monkeypatch.setattr(scripts.ScriptRunner, "process_before_every_sampling", reset_then_hook)
    runner = load_pg()
    monkeypatch.setattr(pg_module(), "HOST", forge)
    return model, nets, runner


def _slow_reference(model, nets, omega, selected):
    def chain(factor_of):
        unet, clip = model.forge_objects_original.unet.clone(), model.forge_objects_original.clip.clone()
        for net, s in zip(nets.loaded_networks, nets.strengths):
            f = FILES[net.name]
            unet.add_patches(filename=f, patches=nets.available[net.name], strength_patch=s * factor_of(net.name))
            clip.patcher.add_patches(filename=f, patches=nets.available[net.name], strength_patch=s * factor_of(net.name))
        return unet, clip

    def step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        _, text_cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        s = sigma[:, None, None, None]
        x_in, t = x / (s ** 2 + 1) ** 0.5, sigma * 50
        unet, clip = chain(lambda name: omega if name in selected else 1.0)
        clip.patcher.load()
        weak_ctx = clip.cond_stage_model(self.p.negative_prompts)
        unet.load()
        u = calc_cond_uncond_batch(unet.model, [], [{"c_crossattn": weak_ctx}], x_in, t, {})[1]
        unet, clip = chain(lambda name: 1.0)
        unet.load()
        c = calc_cond_uncond_batch(unet.model, [{"c_crossattn": text_cond}], [], x_in, t, {})[0]
        clip.patcher.load()  # leave the text encoder as the host had it (θ')
        self.step += 1
        return x - (u + (c - u) * cond_scale) * s
    return step


def _assert_clean(model):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert model.forge_objects.unet is model.forge_objects_after_applying_lora.unet


@pytest.mark.parametrize("omega, field, selected", [(0.0, "", {"subject", "style"}), (0.5, "subject", {"subject"})])
def test_script_in_forge_matches_the_slow_reference(forge_host, monkeypatch, omega, field, selected):
    model, nets, runner = forge_host
    pg, _ = run(runner, {"enabled": True, "omega": omega, "loras": field}, prompt=PROMPT)
    off, _ = run(runner, prompt=PROMPT)
    _assert_clean(model)
    assert "PG omega" in pg.infotexts[0] and "PG note" not in pg.infotexts[0]
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", _slow_reference(model, nets, omega, selected))
    want, _ = run(runner, prompt=PROMPT)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2


def test_omega_one_and_hires_and_errors(forge_host, monkeypatch):
    model, nets, runner = forge_host
    pg, _ = run(runner, {"enabled": True, "omega": 1.0}, prompt=PROMPT)
    off, _ = run(runner, prompt=PROMPT)
    assert torch.equal(images(pg), images(off))
    hires, _ = run(runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT, enable_hr=True)
    assert "PG note" not in hires.infotexts[0]
    _assert_clean(model)

    def failing(self, *args):
        raise RuntimeError("boom")
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run(runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT)
    _assert_clean(model)


@pytest.mark.parametrize("hires_only", [False, True])
def test_an_unknown_lora_name_is_a_422_naming_the_field(forge_host, hires_only):
    """Through the API a name that matches no LoRA of the pass answers 422 naming 'loras', as in A1111: before
    sampling, or when the hires pass (whose prompt loads only 'style') begins (issue 17 item 7); nothing of
    PG stays and the next job is unchanged."""
    model, nets, runner = forge_host
    off, _ = run(runner, prompt=PROMPT, enable_hr=True)
    with pytest.MonkeyPatch.context() as patch:
        if hires_only:
            hires_prompt_without(patch, "<lora:subject:1>")
        assert_input_error_is_a_422(runner, model, {"enabled": True, "omega": 0.3,
                                                    "loras": "subject" if hires_only else "nobody"},
                                    PROMPT, "loras", enable_hr=True)
    _assert_clean(model)
    again, _ = run(runner, prompt=PROMPT, enable_hr=True)
    assert torch.equal(images(off), images(again))
