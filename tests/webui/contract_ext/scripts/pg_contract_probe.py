"""PG contract probe (tests only): an AlwaysVisible script that records what the real WebUI shows PG's
host double claims about (tests/host/double/contract.py), served at GET /pg-contract/last (the last probed
job), POST /pg-contract/facts (facts that need no job) and GET /pg-contract/digest (a hash of the loaded
weights per component). Args: [enabled, JSON config] with config keys
"prompts" (per-image prompts, set before the prompts are set up), "fail_in": "process" (raise there), "fields" (processing fields to look for),
"network_attrs", "module_attrs", "layer_attrs".
"""
import hashlib
import inspect
import json
import sys
import types

import torch

import gradio as gr
from modules import script_callbacks, scripts, sd_models, shared

LAST = {}
JOB = {"on": False}


def _classify(context, cond, uncond):
    def hit(refs):
        if refs is None or refs.shape[-1] != context.shape[-1]:
            return torch.zeros(context.shape[0], dtype=torch.bool)
        t = min(context.shape[1], refs.shape[1])
        return (context[:, None, :t].cpu() == refs[None, :, :t].cpu()).flatten(2).all(2).any(1)
    return "".join("B" if c and u else "C" if c else "U" if u else "?"
                   for c, u in zip(hit(cond).tolist(), hit(uncond).tolist()))


def _crossattn(c):
    return c.get("crossattn") if isinstance(c, dict) else c


def _on_denoiser(params):
    if not JOB["on"]:
        return
    LAST["steps"].append({"params": sorted(vars(params)), "sampling_step": params.sampling_step,
                          "total_sampling_steps": params.total_sampling_steps, "calls": [],
                          "model": id(shared.sd_model), "checkpoint": shared.sd_model.sd_checkpoint_info.title})
    JOB["step"] = (_crossattn(params.text_cond), _crossattn(params.text_uncond))


def _before_unet(module, args, kwargs):
    if JOB["on"] and LAST["steps"]:
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        LAST["steps"][-1]["calls"].append(_classify(context, *JOB["step"]))


def _on_denoised(params):
    if not JOB["on"]:
        return
    LAST["steps"][-1]["denoised_params"] = sorted(vars(params))
    if "lora" not in LAST:
        LAST["lora"] = _lora_facts()


def _lora_facts():
    networks = sys.modules.get("networks")
    cfg = JOB["config"]
    nets = list(getattr(networks, "loaded_networks", []))
    if not nets:
        return {}
    net = nets[0]
    out = {"network_missing": [a for a in cfg.get("network_attrs", []) if not hasattr(net, a)],
           "on_disk_missing": [a for a in cfg.get("on_disk_attrs", []) if not hasattr(net.network_on_disk, a)]}
    unet_key = next((k for k in net.modules if k.startswith("diffusion_model_")), None)
    te_key = next((k for k in net.modules if "transformer" in net.modules[k].sd_key[:20]), None)
    module = net.modules[unet_key]
    out["module_missing"] = [a for a in cfg.get("module_attrs", []) if not hasattr(module, a)]
    out["unet_multiplier_ok"] = module.multiplier() == net.unet_multiplier
    out["te_multiplier_ok"] = te_key is not None and net.modules[te_key].multiplier() == net.te_multiplier
    expected_scale = module.alpha / module.dim if module.alpha is not None and module.dim else 1.0
    out["calc_scale_ok"] = module.scale is None and abs(module.calc_scale() - expected_scale) < 1e-9
    layer = module.sd_module
    out["layer_missing"] = [a for a in cfg.get("layer_attrs", []) if not hasattr(layer, a)]
    with torch.no_grad():
        w0 = layer.network_weights_backup.to(layer.weight.device, torch.float32)
        up, down = module.up_model.weight.float().flatten(1), module.down_model.weight.float().flatten(1)
        formula = (up @ down).reshape(w0.shape) * module.calc_scale() * module.multiplier()
        updown = module.calc_updown(w0)[0].float()
        out["calc_updown_err"] = float((updown - formula).abs().max())
        out["merged_err"] = float((layer.weight.float() - (w0 + updown)).abs().max())
        out["merge_scale"] = float(updown.abs().max())
    out["layer_name"] = layer.network_layer_name
    return out


class ContractProbe(scripts.Script):
    def title(self):
        return "PG contract probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(value=False, label="probe"), gr.Textbox(value="{}", label="probe config")]

    def _log(self, name, on):
        if on:
            LAST["hooks"].append(name)

    def before_process(self, p, on=False, config="{}", *args):
        _unhook()
        JOB["on"] = bool(on)
        if not on:
            return
        JOB["config"] = json.loads(config or "{}")
        LAST.clear()
        LAST.update(hooks=[], steps=[], model_loaded=0)
        self._log("before_process", on)
        if JOB["config"].get("prompts"):
            p.prompt = list(JOB["config"]["prompts"])
        p.extra_generation_params.update({"PG probe quoted": "a, b: c", "PG probe bare": "PG probe bare",
                                          "PG probe none": None})

    def process(self, p, on=False, *args):
        self._log("process", on)
        if on and JOB["config"].get("fail_in") == "process":
            raise RuntimeError("probe: failing in process on purpose")

    def before_process_batch(self, p, on=False, *args, **kwargs):
        self._log("before_process_batch", on)

    def process_batch(self, p, on=False, *args, **kwargs):
        self._log("process_batch", on)

    def process_before_every_sampling(self, p, on=False, *args, **kwargs):
        self._log("process_before_every_sampling", on)
        if not on:
            return
        LAST.setdefault("before_sampling_kwargs", sorted(kwargs))
        LAST.setdefault("p_missing", [f for f in JOB["config"].get("fields", []) if not hasattr(p, f)])
        if "handle" not in JOB:
            JOB["handle"] = shared.sd_model.model.diffusion_model.register_forward_pre_hook(_before_unet, with_kwargs=True)

    def before_hr(self, p, on=False, *args):
        self._log("before_hr", on)

    def postprocess_batch(self, p, on=False, *args, **kwargs):
        self._log("postprocess_batch", on)

    def postprocess(self, p, processed, on=False, *args):
        self._log("postprocess", on)
        JOB["on"] = False
        _unhook()


def _unhook():
    handle = JOB.pop("handle", None)
    if handle is not None:
        handle.remove()


def _on_model_loaded(sd_model):
    if JOB["on"]:
        LAST["model_loaded"] += 1


def _facts(queries):
    from modules import lowvram

    out = {"cfg_denoiser_params": list(inspect.signature(script_callbacks.CFGDenoiserParams).parameters),
           "option_info_params": list(inspect.signature(shared.OptionInfo).parameters)}
    info = shared.OptionInfo(0.5, "probe")
    out["option_info_chain"] = info.info("x") is info and info.needs_reload_ui() is info
    try:
        getattr(shared.opts, "pg_contract_probe_not_registered")
        out["unknown_option"] = "no error"
    except AttributeError:
        out["unknown_option"] = "AttributeError"
    xyz = next((d.module for d in scripts.scripts_data if d.path.endswith("xyz_grid.py")), None)
    out["xyz_module_name"] = xyz.__name__ if xyz else None
    out["axis_option_params"] = list(inspect.signature(xyz.AxisOption).parameters) if xyz else None
    flags = {}
    for medvram in (True, False):  # setup_for_low_vram on a stand-in object: it sets the flag first
        dummy = types.SimpleNamespace()
        try:
            lowvram.setup_for_low_vram(dummy, medvram)
        except Exception:
            pass
        flags["medvram" if medvram else "lowvram"] = getattr(dummy, "lowvram", None)
    out["lowvram_flag"] = flags
    out["checkpoints"] = {i.title: [i.name, i.name_for_extra, i.model_name, i.hash, i.shorthash, i.sha256, i.ids]
                          for i in sd_models.checkpoints_list.values()}
    out["matches"] = {q: getattr(sd_models.get_closet_checkpoint_match(q), "title", None) for q in queries}
    return out


def _digest():
    """A hash of every tensor in the loaded model's state dict, per top-level component: tells weights that
    changed from a numerically different computation."""
    groups = {}
    for key, tensor in shared.sd_model.state_dict().items():
        parts = key.split(".")
        group = ".".join(parts[:3] if parts[0] == "conditioner" else parts[:2])
        h = groups.setdefault(group, hashlib.blake2b(digest_size=16))
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"components": {k: h.hexdigest() for k, h in groups.items()}}


def _on_app_started(demo, app):
    from fastapi import Request

    async def facts(request: Request):
        body = await request.json()
        return _facts(body.get("queries", []))

    app.add_api_route("/pg-contract/last", lambda: LAST, methods=["GET"])
    app.add_api_route("/pg-contract/facts", facts, methods=["POST"])
    app.add_api_route("/pg-contract/digest", _digest, methods=["GET"])


script_callbacks.on_cfg_denoiser(_on_denoiser)
script_callbacks.on_cfg_denoised(_on_denoised)
script_callbacks.on_model_loaded(_on_model_loaded)
script_callbacks.on_app_started(_on_app_started)
