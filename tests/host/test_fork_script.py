"""The entry script with each fork's adapter (reForge, Forge 2, Forge Neo), on the A1111 double's job loop with that
fork's CFG step: one set of cases, parametrized over the hosts (issue 17 item 7; these were test_reforge_script.py
and test_forge_script.py, the same cases copied per host; Neo had no script-level test).

What changes against tests/host/test_script.py: `shared.sd_model` is served as the fork serves it (forge_objects,
patchers of our double of the fork), the Lora extension only names the networks and adds patcher entries, and the
CFG step is the fork's (`reforge_double/reforge_cfg_denoiser.py`, `forge_double/forge_cfg_denoiser.py`: B-row
callback, then the batched call on the pass's UNet patcher, which the host loads, i.e. merges, first).

    reForge  ComfyUI's patcher (ldm_patched double): one clone per LoRA, entries per key, shared `backup`
    Forge    `lora_patches` by file, merged by the model's `LoraLoader`, originals in its `backup`
    Neo      Forge 2's CFG step and rows with ComfyUI's patcher (neo_double; Neo's `backend` stands in for the
             Forge double's in sys.modules while a Neo case runs, as in test_neo_adapter.py)

The reference recomputes every step the slow way: the selected LoRAs at ω × strength in patchers of their own
(the host's loader), the weak prompt encoded and the uncond entry run alone with them; in base-checkpoint mode
the UNet under those LoRAs is lerp(base, θ', ω), written into the parameters for that call only.
"""
import sys
import types

import pytest
import safetensors.torch
import torch

import reforge_model  # noqa: F401  (puts the reForge double on sys.path)
import test_forge_adapter as fa  # noqa: F401  (puts the Forge double on sys.path)
import test_neo_adapter as na  # Neo's double, imported under its own module names (na.NEO)
from backend.modules.k_model import KModel
from backend.operations import as_forge_linears
from backend.patcher.base import ModelPatcher
from backend.sampling.sampling_function import calc_cond_uncond_batch
from forge_cfg_denoiser import forge_cfg_step
from ldm_patched.modules.samplers import calc_cond_batch
from reforge_cfg_denoiser import reforge_cfg_step
from modules import processing, prompt_parser, scripts, sd_models, sd_samplers, shared
from pg_host import images, load_pg, make_p, pg_module, run
from reforge_model import ReforgeNetworks, ReforgeSD, lora_patches
from test_reforge_adapter import ReforgeModelView
from fork_objects import CLIP, ForgeObjects, assert_input_error_is_a_422, hires_prompt_without, lora_hash
from tiny_sd import DIM, TextEncoder
from tiny_unet import TinyUNet

from pg_hosts import forge, forge_neo, reforge

PROMPT = "a photo of sks cat <lora:subject:1> <lora:style:1>"
FILES = {"subject": "/loras/subject.safetensors", "style": "/loras/style.safetensors"}
HOSTS = ("reforge", "forge", "forge_neo")
BASE = "origin"  # the base checkpoint's name in the WebUI's list (the loaded one is 'base', conftest.py)


# -- Forge 2, as its loader serves the model ------------------------------------------------------------

class ForgeSD(fa.ForgeModel):
    def __init__(self):
        torch.manual_seed(0)
        unet = as_forge_linears(TinyUNet(16, DIM)).requires_grad_(False)
        text = as_forge_linears(TextEncoder()).requires_grad_(False)
        self.forge_objects = ForgeObjects(ModelPatcher(KModel(unet)), CLIP(text, ModelPatcher(text)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.lowvram, self.sd_checkpoint_info = False, None

    @property
    def unet_module(self):
        return self.forge_objects_original.unet.model.diffusion_model

    def get_learned_conditioning(self, texts):
        clip = self.forge_objects.clip
        clip.patcher.load()  # sd15.py:64-65 loads the CLIP patcher (merging its LoRAs) before encoding
        return clip.cond_stage_model(texts)


class ForgeNetworks:
    def __init__(self, model):
        self.model, self.available, self.loaded_networks, self.strengths = model, {}, [], []
        self.record = None

    def activate(self, p, found):
        """networks.py:68-126: names in loaded_networks, patches by file on fresh clones, in order; the same
        LoRAs as last time keep their patchers (the `current_lora_hash` check, :106-109)."""
        self.loaded_networks = [types.SimpleNamespace(name=n, mentioned_name=n,
                                                      network_on_disk=types.SimpleNamespace(filename=FILES[n]))
                                for n, _ in found]
        self.strengths = [float(args[0]) if args else 1.0 for _, args in found]
        record = str([[FILES[n], s, s, False] for (n, _), s in zip(found, self.strengths)])
        if record == self.record:
            return
        self.record = record
        self.model.apply_loras([(FILES[n], self.available[n], s) for (n, _), s in zip(found, self.strengths)])


# -- Forge Neo, as its diffusion engine serves the model ------------------------------------------------

class NeoSD:
    def __init__(self):
        torch.manual_seed(0)
        unet = na.as_neo_layers(TinyUNet(16, DIM)).requires_grad_(False)
        text = na.as_neo_layers(TextEncoder()).requires_grad_(False)
        self.forge_objects = ForgeObjects(na.ModelPatcher(na.KModel(unet)), CLIP(text, na.ModelPatcher(text)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.lowvram, self.sd_checkpoint_info, self.current_lora_hash = False, None, None

    @property
    def unet_module(self):
        return self.forge_objects_original.unet.model.diffusion_model

    def get_learned_conditioning(self, texts):
        clip = self.forge_objects.clip
        clip.patcher.load()  # backend/diffusion_engine/sd15.py:49-50 loads the CLIP patcher before each encode
        return clip.cond_stage_model(texts)

    def modules(self):
        return list(self.unet_module.modules()) + list(self.forge_objects_original.clip.cond_stage_model.modules())


class NeoNetworks:
    """Neo's Lora extension: `load_networks` (networks.py:120-150) records the LoRAs in `current_lora_hash` and,
    when they changed, runs `load_lora_for_models` per LoRA from the original patchers; the adapter replays it
    through this module's `load_lora_state_dict` / `load_lora_for_models`."""

    def __init__(self, model):
        self.model, self.available, self.loaded_networks = model, {}, []

    def activate(self, p, found):
        self.loaded_networks = [types.SimpleNamespace(name=n, mentioned_name=n,
                                                      network_on_disk=types.SimpleNamespace(filename=FILES[n]))
                                for n, _ in found]
        strengths = [float(args[0]) if args else 1.0 for _, args in found]
        record = lora_hash([[FILES[n], s, s, False] for (n, _), s in zip(found, strengths)])
        if record == self.model.current_lora_hash:
            return
        self.model.current_lora_hash = record
        self.model.forge_objects = na.chain(self.model.forge_objects_original,
                                            [(FILES[n], self.available[n], s) for (n, _), s in zip(found, strengths)])
        self.model.forge_objects_after_applying_lora = self.model.forge_objects.shallow_copy()

    def load_lora_state_dict(self, filename):
        return dict(self.available[next(n for n, f in FILES.items() if f == filename)])

    @staticmethod
    def load_lora_for_models(*args, **kwargs):
        return na.load_lora_for_models(*args, **kwargs)


# -- the slow references --------------------------------------------------------------------------------

class BaseWeights:
    """θ_ω's UNet under the LoRAs in base-checkpoint mode: lerp(base, θ', ω) written into the (unpatched)
    parameters while the weak call runs, θ' put back after it."""

    def __init__(self, unet, base: dict, omega: float):
        self.unet, self.base, self.omega = unet, base, omega

    def __enter__(self):
        self.saved = {}
        for name, param in self.unet.named_parameters():
            self.saved[name] = param.data.clone()
            param.data.copy_(torch.lerp(self.base[name].to(param.dtype), param.data, self.omega))

    def __exit__(self, *exc):
        for name, param in self.unet.named_parameters():
            param.data.copy_(self.saved[name])


def _reforge_reference(model, nets, omega, selected, text_omega=None, base=None):
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
        model.forge_objects_original.unet.unpatch_model()  # θ' itself in the parameters (the backup is shared)
        with BaseWeights(model.unet_module, base, w) if base else _nothing(), weak.unet() as unet:
            uncond_eps = calc_cond_batch(unet.model, [None, [{"c_crossattn": weak_ctx}]], x_in, t, {})[1]
        with ReforgeModelView(model, chain).unet() as unet:
            cond_eps = calc_cond_batch(unet.model, [[{"c_crossattn": text_cond}], None], x_in, t, {})[0]
        self.step += 1
        return x - (uncond_eps + (cond_eps - uncond_eps) * cond_scale) * s
    return step


def _reference_step_inputs(denoiser, x, sigma, cond, omega, text_omega):
    """What a slow reference step starts from: the cond, this step's ω (a schedule reads the host's step counter)
    and the text encoder's ω (ω = 1: a plain CFG step), σ broadcast, the scaled input and the UNet's timestep."""
    _, text_cond = prompt_parser.reconstruct_multicond_batch(cond, denoiser.step)
    w = omega(shared.state.sampling_step / max(shared.state.sampling_steps, 1)) if callable(omega) else omega
    tw = 1.0 if w == 1.0 else w if text_omega is None else text_omega
    s = sigma[:, None, None, None]
    return text_cond, w, tw, s, x / (s ** 2 + 1) ** 0.5, sigma * 50


def _forge_reference(model, nets, omega, selected, text_omega=None, base=None):
    def chain(factor_of):
        unet, clip = model.forge_objects_original.unet.clone(), model.forge_objects_original.clip.clone()
        for net, s in zip(nets.loaded_networks, nets.strengths):
            f = FILES[net.name]
            unet.add_patches(filename=f, patches=nets.available[net.name], strength_patch=s * factor_of(net.name))
            clip.patcher.add_patches(filename=f, patches=nets.available[net.name], strength_patch=s * factor_of(net.name))
        return unet, clip

    def step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        text_cond, w, tw, s, x_in, t = _reference_step_inputs(self, x, sigma, cond, omega, text_omega)
        unet, clip = chain(lambda name: tw if name in selected else 1.0)
        clip.patcher.load()
        weak_ctx = clip.cond_stage_model(self.p.negative_prompts)
        unet, _ = chain(lambda name: w if name in selected else 1.0)
        unet.lora_loader.refresh({})  # the loader restores θ' before it merges another set (lora.py:379-386)
        with BaseWeights(model.unet_module, base, w) if base else _nothing():
            unet.load()
            u = calc_cond_uncond_batch(unet.model, [], [{"c_crossattn": weak_ctx}], x_in, t, {})[1]
            unet.lora_loader.refresh({})
        unet, clip = chain(lambda name: 1.0)
        unet.load()
        c = calc_cond_uncond_batch(unet.model, [{"c_crossattn": text_cond}], [], x_in, t, {})[0]
        clip.patcher.load()  # leave the text encoder as the host had it (θ')
        self.step += 1
        return x - (u + (c - u) * cond_scale) * s
    return step


def _neo_reference(model, nets, omega, selected, text_omega=None, base=None):
    def chain(factor):
        return na.chain(model.forge_objects_original,
                        [(FILES[n.name], nets.available[n.name], 1.0 * factor(n.name)) for n in nets.loaded_networks])

    def step(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        from backend.sampling.sampling_function import calc_cond_uncond_batch as neo_batch

        text_cond, w, tw, s, x_in, t = _reference_step_inputs(self, x, sigma, cond, omega, text_omega)
        text = chain(lambda name: tw if name in selected else 1.0)
        text.clip.patcher.load()
        weak_ctx = text.clip.cond_stage_model(self.p.negative_prompts)
        weak = chain(lambda name: w if name in selected else 1.0)
        weak.unet.unpatch_model()  # θ' itself in the parameters (the backup is shared by every clone)
        with BaseWeights(model.unet_module, base, w) if base else _nothing():
            weak.unet.load()
            u = neo_batch(weak.unet.model, [], [{"c_crossattn": weak_ctx}], x_in, t, {})[1]
            weak.unet.unpatch_model()
        full = chain(lambda name: 1.0)
        full.unet.load()
        c = neo_batch(full.unet.model, [{"c_crossattn": text_cond}], [], x_in, t, {})[0]
        full.clip.patcher.load()  # leave the text encoder as the host had it (θ')
        self.step += 1
        return x - (u + (c - u) * cond_scale) * s
    return step


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# -- the hosts ------------------------------------------------------------------------------------------

class Fork:
    def __init__(self, name, adapter, model, nets, cfg_step, reference, runner):
        self.name, self.adapter, self.model, self.nets = name, adapter, model, nets
        self.cfg_step, self.reference, self.runner = cfg_step, reference, runner

    def slow_reference(self, omega, selected, text_omega=None, base=None):
        return self.reference(self.model, self.nets, omega, selected, text_omega, base)


def _reforge(host):
    model = ReforgeSD()
    nets = ReforgeNetworks(model)
    nets.register("subject", lora_patches(model, seed=21, kind="lora"))
    nets.register("style", lora_patches(model, seed=22, kind="loha", only=lambda k: "attn" in k))
    return model, nets, reforge_cfg_step, _reforge_reference, reforge


def _forge_like(model, nets, patches):
    """Forge 2 and Neo: the Lora extension's `available` networks, the subject LoRA and a LoHa on attention."""
    nets.available = {"subject": patches(model, 21, "lora"),
                      "style": patches(model, 22, "loha", only=lambda k: "attn" in k)}
    return model, nets


def _forge(host):
    model = ForgeSD()
    return _forge_like(model, ForgeNetworks(model), fa.patches) + (forge_cfg_step, _forge_reference, forge)


def _neo(host):
    model = NeoSD()
    return _forge_like(model, NeoNetworks(model), na.patches) + (forge_cfg_step, _neo_reference, forge_neo)


@pytest.fixture(params=HOSTS)
def fork(request, host, monkeypatch):
    import networks as a1111_lora

    a1111_lora.uninstall()  # A1111's Lora extension merges in every layer's forward; the forks' do not
    if request.param == "forge_neo":  # the adapter and the CFG step import `backend.*` when they run: Neo's
        for name in [k for k in sys.modules if na._is_backend(k)]:
            monkeypatch.delitem(sys.modules, name)
        for name, module in na.NEO.items():
            monkeypatch.setitem(sys.modules, name, module)
    model, nets, cfg_step, reference, adapter = {"reforge": _reforge, "forge": _forge,
                                                 "forge_neo": _neo}[request.param](host)
    model.sd_checkpoint_info = host.sd_checkpoint_info
    monkeypatch.setattr(shared, "sd_model", model)
    monkeypatch.setitem(sys.modules, "networks", nets)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", cfg_step)
    # reForge processing.py:283-284, Forge :263-264 (Neo the same): `p.sd_model` is shared.sd_model
    monkeypatch.setattr(processing.StableDiffusionProcessingTxt2Img, "sd_model", property(lambda p: shared.sd_model),
                        raising=False)
    original = scripts.ScriptRunner.process_before_every_sampling

    def reset_then_hook(self, p, **kwargs):  # reForge processing.py:1458 -> 1462, Forge :1373 -> 1377, Neo :1379-1383
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        return original(self, p, **kwargs)
    monkeypatch.setattr(scripts.ScriptRunner, "process_before_every_sampling", reset_then_hook)
    runner = load_pg()
    monkeypatch.setattr(pg_module(), "HOST", adapter)  # detection is tested on its own (test_hosts.py)
    return Fork(request.param, adapter, model, nets, cfg_step, reference, runner)


def _assert_clean(model):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert model.forge_objects.unet is model.forge_objects_after_applying_lora.unet  # PG's clone is gone


# -- LoRA mode ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("omega, field, selected", [(0.0, "", {"subject", "style"}), (0.5, "subject", {"subject"})])
def test_script_matches_the_slow_reference(fork, monkeypatch, omega, field, selected):
    pg, _ = run(fork.runner, {"enabled": True, "omega": omega, "loras": field}, prompt=PROMPT)
    off, _ = run(fork.runner, prompt=PROMPT)
    _assert_clean(fork.model)
    assert "PG omega" in pg.infotexts[0] and "PG note" not in pg.infotexts[0]
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", fork.slow_reference(omega, selected))
    want, _ = run(fork.runner, prompt=PROMPT)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2  # PG changed the image: the comparison can fail


def test_linear_schedule_from_plain_cfg_matches_the_slow_reference_at_each_steps_omega(fork, monkeypatch):
    """ω 1 → 0 over the run: the adapter builds its differences at the lowest ω (at ω = 1 there are none)
    and each step rescales them; LoHa (style) and LoRA (subject) are both affine in their strength."""
    from pg_ext.schedule import OmegaSchedule

    pg, _ = run(fork.runner, {"enabled": True, "omega": 1.0, "schedule": "linear", "omega_end": 0.0}, prompt=PROMPT)
    off, _ = run(fork.runner, prompt=PROMPT)
    _assert_clean(fork.model)
    assert "PG note" not in pg.infotexts[0] and "PG schedule: linear" in pg.infotexts[0]
    schedule = OmegaSchedule("linear", 1.0, 0.0)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__",
                        fork.slow_reference(schedule.omega_at, {"subject", "style"}, schedule.middle()))
    want, _ = run(fork.runner, prompt=PROMPT)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2


def test_omega_one_is_plain_cfg_bit_for_bit(fork):
    pg, _ = run(fork.runner, {"enabled": True, "omega": 1.0}, prompt=PROMPT)
    off, _ = run(fork.runner, prompt=PROMPT)
    assert torch.equal(images(pg), images(off))
    _assert_clean(fork.model)


def test_hires_pass_is_guided_and_leaves_nothing(fork, monkeypatch):
    plans = []
    original = fork.adapter.begin_pass
    monkeypatch.setattr(fork.adapter, "begin_pass", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    pg, _ = run(fork.runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT, enable_hr=True)
    off, _ = run(fork.runner, prompt=PROMPT, enable_hr=True)
    # first pass and hires pass (the double's job loop calls process_before_every_sampling once per pass;
    # Forge's second call of the hires pass, processing.py:1510/1522, is begin_pass's end_pass-first rule)
    assert len(plans) == 2 and all(plan is not None for plan in plans)
    assert "PG note" not in pg.infotexts[0]
    assert (images(pg) - images(off)).abs().max() > 1e-2
    _assert_clean(fork.model)


def test_an_error_mid_sampling_reaches_the_caller_and_leaves_nothing(fork, monkeypatch):
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return fork.cfg_step(self, *args)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run(fork.runner, {"enabled": True, "omega": 0.3}, prompt=PROMPT)
    _assert_clean(fork.model)


@pytest.mark.parametrize("values, field", [({"loras": "nobody"}, "'loras'"),
                                           ({"base_checkpoint": "nothere"}, "'base_checkpoint'"),
                                           ({"base_checkpoint": "base"}, "'base_checkpoint'")])  # = the loaded one
def test_bad_input_is_a_422_naming_the_field_and_the_next_off_image_is_unchanged(fork, values, field):
    off, _ = run(fork.runner, prompt=PROMPT)
    p = make_p(fork.runner, {"enabled": True, "omega": 0.3, **values}, prompt=PROMPT)
    p.is_api = True
    from fastapi import HTTPException
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422 and field in err.value.detail
    _assert_clean(fork.model)
    again, _ = run(fork.runner, prompt=PROMPT)
    assert torch.equal(images(off), images(again))


def test_a_selection_error_of_the_hires_pass_is_a_422_too(fork):
    """The hires prompt loads only 'style': 'subject' is unknown when that pass begins (issue 17 item 7).
    Was a `PG note: off for this pass` and HTTP 200; a 422 as in `_check_selection` now, in every host."""
    off, _ = run(fork.runner, prompt=PROMPT, enable_hr=True)
    with pytest.MonkeyPatch.context() as patch:
        hires_prompt_without(patch, "<lora:subject:1>")
        assert_input_error_is_a_422(fork.runner, fork.model, {"enabled": True, "omega": 0.3, "loras": "subject"},
                                    PROMPT, "loras", enable_hr=True)
    _assert_clean(fork.model)
    again, _ = run(fork.runner, prompt=PROMPT, enable_hr=True)
    assert torch.equal(images(off), images(again))


def test_dense_differences_are_merged_once_for_a_hires_pass_and_the_next_job(fork, monkeypatch):
    """'style' is a LoHa: its θ' and θ_ω come from the host's merge (issue 17 item 7), once per key and ω."""
    import pg_hosts.patches as patches

    merged = []
    original = patches.dense_difference
    monkeypatch.setattr(patches, "dense_difference", lambda key, *a: merged.append(key) or original(key, *a))
    pg, _ = run(fork.runner, {"enabled": True, "omega": 0.3, "loras": "style"}, prompt=PROMPT, enable_hr=True)
    first = len(merged)
    assert first and len(set(merged)) == first  # each key once, though the job has two passes
    again, _ = run(fork.runner, {"enabled": True, "omega": 0.3, "loras": "style"}, prompt=PROMPT, enable_hr=True)
    assert len(merged) == first and torch.equal(images(pg), images(again))
    run(fork.runner, {"enabled": True, "omega": 0.2, "loras": "style"}, prompt=PROMPT)
    assert len(merged) == 2 * first  # another ω: merged anew
    _assert_clean(fork.model)


# -- base-checkpoint (DreamBooth) mode ------------------------------------------------------------------

@pytest.fixture
def base_file(fork, tmp_path):
    """A base checkpoint of the loaded fine-tune ('origin' in the WebUI's list), saved with the checkpoint's UNet
    prefix: every weight moved by a seeded rank-1 difference (a fine-tune's difference is mostly low rank, so
    low-memory mode can be near exact), every other tensor by noise; returns {parameter name: base tensor}."""
    gen = torch.Generator().manual_seed(5)

    def moved(p):
        if p.dim() < 2:
            return p + 0.05 * torch.randn(p.shape, generator=gen)
        u, v = torch.randn(p.shape[0], 1, generator=gen), torch.randn(1, p[0].numel(), generator=gen)
        return p + 0.05 * (u @ v).reshape(p.shape)
    base = {name: moved(p.detach()).contiguous() for name, p in fork.model.unet_module.named_parameters()}
    safetensors.torch.save_file({f"model.diffusion_model.{k}": v for k, v in base.items()},
                                str(tmp_path / "ckpt" / f"{BASE}.safetensors"))
    sd_models.list_models()
    shared.opts.pg_base_cache_size = 0  # every job reads the base against the model as it stands then
    return base


@pytest.mark.parametrize("omega, field, selected, mode", [
    (0.5, "subject", {"subject"}, "exact"),    # a DreamBooth model with LoRAs on top, one of them weakened
    (0.0, "", {"subject", "style"}, "exact"),
    (0.3, "", set(), "exact"),                 # no LoRA in this job's prompt: the paper's own setting
])
def test_base_checkpoint_matches_the_slow_reference(fork, base_file, monkeypatch, omega, field, selected, mode):
    """θ_ω = lerp(base, θ', ω) under the prompt's LoRAs, the selected ones at ω × strength. A LoRA-free job runs
    first, so the host has merged the LoRAs of that job into the parameters: PG must read θ' from the host's
    backup (reForge's patcher `backup`, Forge's `lora_loader.backup`), not from the merged parameters."""
    prompt = PROMPT if selected else "a photo of sks cat"
    run(fork.runner, prompt=PROMPT)  # the host's LoRAs merged into the parameters, as after any job
    pg, _ = run(fork.runner, {"enabled": True, "omega": omega, "loras": field, "base_checkpoint": BASE,
                              "base_mode": mode}, prompt=prompt)
    text = pg.infotexts[0]
    assert "PG base: origin" in text and "PG note" not in text, text
    off, _ = run(fork.runner, prompt=prompt)
    _assert_clean(fork.model)
    monkeypatch.setattr(sd_samplers.CFGDenoiser, "__call__", fork.slow_reference(omega, selected, base=base_file))
    want, _ = run(fork.runner, prompt=prompt)
    torch.testing.assert_close(images(pg), images(want), atol=1e-4, rtol=1e-4)
    assert (images(pg) - images(off)).abs().max() > 1e-2


def test_base_checkpoint_low_memory_is_near_exact(fork, base_file):
    args = {"enabled": True, "omega": 0.3, "base_checkpoint": BASE}
    exact, _ = run(fork.runner, {**args, "base_mode": "exact"}, prompt=PROMPT)
    low, _ = run(fork.runner, {**args, "base_mode": "low-memory"}, prompt=PROMPT)
    off, _ = run(fork.runner, prompt=PROMPT)
    assert "PG base mode: low-memory" in low.infotexts[0] and "PG note" not in low.infotexts[0]
    far = (images(exact) - images(off)).abs().mean()
    assert (images(low) - images(exact)).abs().mean() < 0.5 * far
    _assert_clean(fork.model)


def test_base_checkpoint_reads_the_unmerged_weights_of_the_host(fork):
    """original_param while the host has the LoRAs merged: the checkpoint's own value, never θ' + LoRA."""
    model = fork.model
    run(fork.runner, prompt=PROMPT)
    layer = model.unet_module.time_embed[0]
    merged = layer.weight.detach().clone()
    original = fork.adapter.original_param(layer, "weight")
    assert not torch.equal(merged, original)  # the LoRAs are merged: the two differ
    if fork.name == "forge":
        model.forge_objects_original.unet.lora_loader.refresh({})
    else:
        model.forge_objects_original.unet.unpatch_model()
    torch.testing.assert_close(layer.weight, original, atol=0, rtol=0)
    assert fork.adapter.original_param(layer, "weight") is layer.weight  # nothing merged: the parameter itself


def test_base_checkpoint_on_quantized_weights_is_a_422_naming_the_tensor(fork, base_file):
    """A weight stored quantized (a gguf/bnb marker on it) cannot be read exactly: refused before sampling."""
    layer = fork.model.unet_module.time_embed[0]
    run(fork.runner, prompt=PROMPT)
    layer.weight.gguf_cls = object()  # on the parameter as it stands (the host's merge makes new ones)
    try:
        p = make_p(fork.runner, {"enabled": True, "omega": 0.3, "base_checkpoint": BASE}, prompt=PROMPT)
        p.is_api = True
        from fastapi import HTTPException
        with pytest.raises(HTTPException) as err:
            processing.process_images(p)
        assert err.value.status_code == 422, err.value.detail
        assert "quantized" in err.value.detail and "time_embed.0.weight" in err.value.detail
        _assert_clean(fork.model)
    finally:
        vars(layer.weight).pop("gguf_cls", None)


def test_exact_base_mode_that_cannot_fit_is_refused_before_sampling(fork, base_file, monkeypatch):
    """Exact mode's memory is checked before the base is read (issue 8), with the fork's own low-VRAM rule
    (`moves_blocks_per_call`): a 422 naming 'base_mode' and the RAM it needs; low-memory mode still runs."""
    from fastapi import HTTPException
    from pg_ext import checkpoint

    off, _ = run(fork.runner, prompt=PROMPT)
    unet_bytes = sum(p.numel() * p.element_size() for p in fork.model.unet_module.parameters())
    monkeypatch.setattr(checkpoint, "free_host_memory", lambda: unet_bytes)  # room for D, not also for θ_ω
    reads = []
    monkeypatch.setattr(pg_module(), "read_unet_tensors", lambda path: reads.append(path) or iter(()))
    p = make_p(fork.runner, {"enabled": True, "omega": 0.3, "base_checkpoint": BASE, "base_mode": "exact"},
               prompt=PROMPT)
    p.is_api = True
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422 and "'base_mode'" in err.value.detail and "GiB of RAM" in err.value.detail
    assert reads == []
    _assert_clean(fork.model)
    again, _ = run(fork.runner, prompt=PROMPT)
    assert torch.equal(images(off), images(again))
