"""Random-weight SD 2.1-v and SDXL models of the real architectures, for the real-WebUI suite (issue 8).

Run with the harness venv (torch, ldm/sgm from the harness WebUI's repositories, offline HF cache):

    HF_HOME=$HARNESS/hf HF_HUB_OFFLINE=1 $HARNESS/venv/bin/python tests/webui/harness_models_families.py sd21v
    HF_HOME=$HARNESS/hf HF_HUB_OFFLINE=1 $HARNESS/venv/bin/python tests/webui/harness_models_families.py sdxl

Seeded and idempotent (a file that exists is kept; --force remakes). Writes under $HARNESS/webui/models:
  sd21v  Stable-diffusion/rand_sd21v.safetensors + rand_sd21v.yaml (the WebUI's 768-v config beside the
         file, so the WebUI loads it as v-prediction without guessing from random weights),
         Lora/rand_sd21v_lora.safetensors: kohya keys on the UNet's transformer linears and the OpenCLIP text
         encoder's attention (q/k/v -> in_proj, out_proj) and MLP; Lora/rand_sd21v_other_lora.safetensors, a
         second one (the "unselected LoRA" case).
  sdxl   Stable-diffusion/rand_sdxl.safetensors (sgm's sd_xl_base.yaml, UNet 2.57 B parameters, fp16 on disk),
         Stable-diffusion/rand_sdxl_dreambooth.safetensors (the base with its UNet perturbed),
         Lora/rand_sdxl_lora.safetensors (UNet + both text encoders: lora_unet_, lora_te1_, lora_te2_ keys),
         Lora/rand_sdxl_other_lora.safetensors (a second, different LoRA: the "unselected LoRA" case),
         VAE-approx/vaeapprox-sdxl.pt (the preview decoder the WebUI would otherwise try to download).

Weights are random; the zero-initialised output layers are re-initialised and the UNet's output, the
prompt's effect and the VAE's output are calibrated so that sampling gives finite, non-trivial images.
Memory: SD 2.1-v ~8 GB peak, SDXL ~12 GB peak (run it with no WebUI running).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
from torch import nn

HARNESS = os.path.realpath(os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness"))
WEBUI = os.path.join(HARNESS, "webui")
MODELS = os.path.join(WEBUI, "models")
REPOS = os.path.join(WEBUI, "repositories")
SD2_CONFIG = os.path.join(REPOS, "stable-diffusion-stability-ai", "configs", "stable-diffusion", "v2-inference-v.yaml")
SDXL_CONFIG = os.path.join(REPOS, "generative-models", "configs", "inference", "sd_xl_base.yaml")
SCHEDULE = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
            "logvar", "denoiser.sigmas"}
PROMPTS = ["a photo of a cat", ""]


# -- files ----------------------------------------------------------------------------------------

def save_sorted(tensors: dict, path: str, metadata: dict | None = None) -> None:
    """safetensors file whose header metadata is sorted, so the file (and the WebUI's hash) is reproducible."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        if meta is not None:
            header = {"__metadata__": dict(sorted(meta.items())), **header}
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        f.seek(8)
        f.write(raw + b" " * (size - len(raw)))


def checkpoint_tensors(state: dict) -> dict:
    """Parameters in fp16 (as released checkpoints are), noise schedules in fp32."""
    out = {}
    for key, value in state.items():
        value = value.detach()
        if value.is_floating_point() and key.rsplit(".", 1)[-1] not in SCHEDULE and key not in SCHEDULE:
            value = value.half()
        out[key] = value.contiguous()
    return out


# -- building the models offline ------------------------------------------------------------------

@contextlib.contextmanager
def offline_encoders(repo: str):
    """Text encoders built from their configs: nothing is downloaded, the OpenCLIP vision tower is skipped."""
    sys.path.insert(0, os.path.join(REPOS, repo))
    import open_clip
    import open_clip.model
    import transformers

    def text_only_clip(arch, *args, **kwargs):
        build_vision = open_clip.model._build_vision_tower
        open_clip.model._build_vision_tower = lambda *a, **k: nn.Identity()
        try:
            return open_clip.create_model(arch, pretrained=None), None, None
        finally:
            open_clip.model._build_vision_tower = build_vision

    def clip_from_config(name, *args, **kwargs):
        return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name))

    saved = (open_clip.create_model_and_transforms, transformers.CLIPTextModel.from_pretrained)
    open_clip.create_model_and_transforms = text_only_clip
    transformers.CLIPTextModel.from_pretrained = staticmethod(clip_from_config)
    try:
        yield
    finally:
        open_clip.create_model_and_transforms, transformers.CLIPTextModel.from_pretrained = saved


def instantiate(config_path: str, repo: str, overrides: dict) -> nn.Module:
    from omegaconf import OmegaConf

    config = OmegaConf.load(config_path)
    for dotted, value in overrides.items():
        OmegaConf.update(config, dotted, value)
    with offline_encoders(repo):
        util = __import__("ldm.util" if repo == "stable-diffusion-stability-ai" else "sgm.util", fromlist=["x"])
        return util.instantiate_from_config(config.model).eval()


def reinit_zero_layers(unet: nn.Module) -> int:
    """Layers initialised to zero (ldm/sgm `zero_module`) get the default init, or the UNet would output 0."""
    count = 0
    for module in unet.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not bool(module.weight.any()):
            module.reset_parameters()
            count += 1
    return count


def calibrate(unet: nn.Module, call, out_conv: nn.Conv2d) -> tuple[float, float]:
    """Output std ~1 and the prompt changing it by ~15 % (a random UNet lets the prompt dominate)."""
    def rescale():
        out = call()
        out_conv.weight.mul_(1.0 / out.std())
        out_conv.bias.mul_(1.0 / out.std())
        return call()

    out = rescale()
    cross_out = [m.attn2.to_out[0] for m in unet.modules() if hasattr(m, "attn2")]
    for _ in range(4):
        factor = float(0.15 / ((out[0] - out[1]).std() / out.std()))
        for linear in cross_out:
            linear.weight.mul_(factor)
            linear.bias.mul_(factor)
        out = rescale()
    return float(out.std()), float((out[0] - out[1]).std())


def calibrate_vae(decode, conv_out: nn.Conv2d) -> float:
    latent = torch.randn(1, 4, 8, 8)
    scale = 0.5 / decode(latent).std()
    conv_out.weight.mul_(scale)
    conv_out.bias.mul_(scale)
    return float(decode(latent).std())


# -- LoRAs ----------------------------------------------------------------------------------------

def lora_pair(weight: torch.Tensor, rank: int, move: float, gen: torch.Generator) -> tuple:
    """(down, up) with up @ down ~ `move` × the weight's element std (kohya layout, alpha = rank)."""
    out_f, in_f = weight.shape[0], weight[0].numel()
    std = float(weight.float().std())
    down = torch.randn(rank, in_f, generator=gen) / in_f ** 0.5
    # an element of up @ down sums `rank` products of std (up_std / sqrt(in_f)): solve for up_std
    up = torch.randn(out_f, rank, generator=gen) * (move * std * in_f ** 0.5 / rank ** 0.5)
    return down, up


def kohya_lora(targets: dict[str, torch.Tensor], rank: int, move: float, seed: int) -> dict:
    """kohya-format LoRA tensors for `targets` (kohya module name -> the weight it changes)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, weight in targets.items():
        down, up = lora_pair(weight, rank, move, gen)
        out[f"{name}.lora_down.weight"] = down.half().contiguous()
        out[f"{name}.lora_up.weight"] = up.half().contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return out


def unet_targets(unet: nn.Module, blocks: tuple[str, ...] | None, layers: tuple[str, ...]) -> dict:
    """kohya names ('lora_unet_' + the module path, the form the WebUI maps directly) of transformer linears."""
    out = {}
    for name, module in unet.named_modules():
        parts = name.split(".")
        if not isinstance(module, nn.Linear) or "transformer_blocks" not in parts:
            continue
        block = parts[parts.index("transformer_blocks") + 1]
        if (blocks is None or block in blocks) and any(name.endswith(layer) for layer in layers):
            out["lora_unet_" + name.replace(".", "_")] = module.weight.detach()
    return out


def openclip_targets(prefix: str, transformer: nn.Module, layers: range, mlp: bool) -> dict:
    """kohya names of an OpenCLIP text tower's attention (q/k/v split from in_proj) and MLP."""
    out = {}
    for i in layers:
        block = transformer.resblocks[i]
        q, k, v = block.attn.in_proj_weight.detach().chunk(3)
        base = f"{prefix}_text_model_encoder_layers_{i}"
        out.update({f"{base}_self_attn_q_proj": q, f"{base}_self_attn_k_proj": k, f"{base}_self_attn_v_proj": v,
                    f"{base}_self_attn_out_proj": block.attn.out_proj.weight.detach()})
        if mlp:
            out[f"{base}_mlp_fc1"] = block.mlp.c_fc.weight.detach()
            out[f"{base}_mlp_fc2"] = block.mlp.c_proj.weight.detach()
    return out


def hf_clip_targets(prefix: str, text_model: nn.Module) -> dict:
    out = {}
    for i, layer in enumerate(text_model.encoder.layers):
        base = f"{prefix}_text_model_encoder_layers_{i}"
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{base}_self_attn_{part}"] = getattr(layer.self_attn, part).weight.detach()
        out[f"{base}_mlp_fc1"], out[f"{base}_mlp_fc2"] = layer.mlp.fc1.weight.detach(), layer.mlp.fc2.weight.detach()
    return out


def perturb_unet(unet: nn.Module, targets: dict, seed: int) -> None:
    """A stand-in DreamBooth fine-tune: rank-8 deltas of 10 % weight std on `targets`, 1 % noise everywhere."""
    gen = torch.Generator().manual_seed(seed)
    for param in unet.parameters():
        if param.is_floating_point() and param.numel() > 1:
            noise = torch.randn(param.shape, generator=gen) * (0.01 * float(param.float().std()))
            param.add_(noise.to(param.dtype))
    for weight in targets.values():
        down, up = lora_pair(weight, 8, 0.10, gen)
        weight.add_((up @ down).reshape(weight.shape).to(weight.dtype))


# -- the two families -----------------------------------------------------------------------------

def make_sd21v(force: bool) -> list[str]:
    ckpt = os.path.join(MODELS, "Stable-diffusion", "rand_sd21v.safetensors")
    lora = os.path.join(MODELS, "Lora", "rand_sd21v_lora.safetensors")
    other = os.path.join(MODELS, "Lora", "rand_sd21v_other_lora.safetensors")
    if not force and all(os.path.exists(p) for p in (ckpt, lora, other)):
        return []
    torch.manual_seed(2101)
    model = instantiate(SD2_CONFIG, "stable-diffusion-stability-ai", {"model.params.unet_config.params.use_checkpoint": False,
                                                                     "model.params.unet_config.params.use_fp16": False})
    model.cond_stage_model.device = "cpu"
    unet = model.model.diffusion_model
    print(f"sd21v: re-initialised {reinit_zero_layers(unet)} zero layers", flush=True)
    context = model.cond_stage_model.encode(PROMPTS)
    x, t = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1), torch.tensor([500, 500])
    std, prompt = calibrate(unet, lambda: unet(x, t, context=context), unet.out[-1])
    vae = calibrate_vae(model.first_stage_model.decode, model.first_stage_model.decoder.conv_out)
    print(f"sd21v: UNet output std {std:.3f}, cond - uncond std {prompt:.3f}, VAE output std {vae:.3f}", flush=True)
    save_sorted(checkpoint_tensors(model.state_dict()), ckpt)
    with open(SD2_CONFIG, encoding="utf-8") as src, open(ckpt[:-len(".safetensors")] + ".yaml", "w", encoding="utf-8") as dst:
        dst.write(src.read())
    targets = unet_targets(unet, None, ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                                        "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"))
    targets.update(openclip_targets("lora_te", model.cond_stage_model.model.transformer, range(24), mlp=True))
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v2"}
    save_sorted(kohya_lora(targets, rank=4, move=0.15, seed=2102), lora, metadata={**meta, "pg_test": "sd21v subject"})
    second = unet_targets(unet, None, ("attn1.to_q", "attn2.to_v", "ff.net.2"))
    second.update(openclip_targets("lora_te", model.cond_stage_model.model.transformer, range(0, 24, 3), mlp=False))
    save_sorted(kohya_lora(second, rank=4, move=0.15, seed=2103), other, metadata={**meta, "pg_test": "sd21v other"})
    return [ckpt, lora, other]


def make_sdxl(force: bool) -> list[str]:
    names = ("rand_sdxl", "rand_sdxl_dreambooth")
    ckpts = [os.path.join(MODELS, "Stable-diffusion", n + ".safetensors") for n in names]
    loras = [os.path.join(MODELS, "Lora", n + ".safetensors") for n in ("rand_sdxl_lora", "rand_sdxl_other_lora")]
    if not force and all(os.path.exists(p) for p in ckpts + loras):
        return []
    torch.manual_seed(1024)
    overrides = {"model.params.network_config.params.spatial_transformer_attn_type": "softmax",
                 "model.params.network_config.params.use_checkpoint": False,
                 "model.params.first_stage_config.params.ddconfig.attn_type": "vanilla"}
    # built in fp16 and computed in fp32 one part at a time: peak ~12 GB instead of ~15 GB all in fp32
    torch.set_default_dtype(torch.float16)
    try:
        model = instantiate(SDXL_CONFIG, "generative-models", overrides)
    finally:
        torch.set_default_dtype(torch.float32)
    te1, te2 = model.conditioner.embedders[0], model.conditioner.embedders[1]
    te1.device = te2.device = "cpu"
    unet = model.model.diffusion_model
    print(f"sdxl: re-initialised {reinit_zero_layers(unet)} zero layers", flush=True)
    batch = {"txt": PROMPTS, "original_size_as_tuple": torch.tensor([[64, 64]] * 2),
             "crop_coords_top_left": torch.tensor([[0, 0]] * 2), "target_size_as_tuple": torch.tensor([[64, 64]] * 2)}
    model.conditioner.float()
    cond = model.conditioner(batch)
    model.conditioner.half()
    model.model.float()
    model.first_stage_model.float()
    x, t = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1), torch.tensor([500, 500])
    std, prompt = calibrate(unet, lambda: unet(x, t, context=cond["crossattn"], y=cond["vector"]), unet.out[-1])
    decode = model.first_stage_model.decode
    vae = calibrate_vae(decode, model.first_stage_model.decoder.conv_out)
    print(f"sdxl: UNet output std {std:.3f}, cond - uncond std {prompt:.3f}, VAE output std {vae:.3f}", flush=True)
    for part in (model.model, model.conditioner, model.first_stage_model):  # not the fp32 noise schedule
        part.half()  # in place, tensor by tensor: the fp32 copy never exists twice
    unet_layers = ("attn1.to_q", "attn1.to_out.0", "attn2.to_k", "attn2.to_v")
    subject = unet_targets(unet, ("0", "1"), unet_layers)
    subject.update(hf_clip_targets("lora_te1", te1.transformer.text_model))
    subject.update(openclip_targets("lora_te2", te2.model.transformer, range(8), mlp=False))
    other = unet_targets(unet, ("0",), ("attn1.to_k", "attn1.to_v", "attn2.to_q"))
    other.update(openclip_targets("lora_te2", te2.model.transformer, range(2), mlp=False))
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"}
    save_sorted(kohya_lora({k: v.float() for k, v in subject.items()}, rank=4, move=0.15, seed=1025), loras[0],
                metadata={**meta, "pg_test": "sdxl subject"})
    save_sorted(kohya_lora({k: v.float() for k, v in other.items()}, rank=4, move=0.15, seed=1026), loras[1],
                metadata={**meta, "pg_test": "sdxl other"})
    save_sorted(checkpoint_tensors(model.state_dict()), ckpts[0])
    perturb_unet(unet, unet_targets(unet, None, unet_layers), seed=1027)
    save_sorted(checkpoint_tensors(model.state_dict()), ckpts[1])
    return ckpts + loras


# The WebUI loads its "Approx NN" preview decoder for every job (modules/sd_vae_approx.py) and downloads it when
# missing: SD 1.x's ships with the WebUI, SDXL's does not. Same layer shapes: 8 convolutions, channels below.
VAE_APPROX_CHANNELS = ((4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3))


def make_vae_approx_sdxl() -> list[str]:
    """A random preview decoder for SDXL (previews only: never part of a generated image)."""
    path = os.path.join(MODELS, "VAE-approx", "vaeapprox-sdxl.pt")
    if os.path.exists(path):
        return []
    gen = torch.Generator().manual_seed(1028)
    state = {}
    for i, (cin, cout, k) in enumerate(VAE_APPROX_CHANNELS, start=1):
        state[f"conv{i}.weight"] = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
        state[f"conv{i}.bias"] = torch.zeros(cout)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # the legacy pickle format: the WebUI's restricted loader (modules/safe.py) rejects the entries newer
    # torch versions add to the zip format, and would load None
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=("sd21v", "sdxl"))
    parser.add_argument("--force", action="store_true", help="remake files that exist")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    started = time.time()
    written = make_sd21v(args.force) if args.family == "sd21v" else make_sdxl(args.force) + make_vae_approx_sdxl()
    for path in written:
        print("wrote", path)
    print(f"{args.family}: {'nothing to do' if not written else f'done in {time.time() - started:.0f} s'}")


if __name__ == "__main__":
    main()
