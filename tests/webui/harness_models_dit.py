"""Random-weight diffusion-transformer models that Forge Neo's own loader detects and samples (issue 18, item 3).

Run with the Neo harness venv, from anywhere (it imports Neo's own layer classes to get the exact key layout
and shapes, builds them on the meta device, then fills every tensor with seeded random values of its own):

    ~/.cache/pg-fork-harness/forge_neo/venv/bin/python tests/webui/harness_models_dit.py anima [--force]

Seeded and idempotent (a file that exists is kept; --force remakes). Writes under $NEO/webui/models
(NEO defaults to ~/.cache/pg-fork-harness/forge_neo). Nothing of Neo's is edited: the sizes below are the ones
Neo's detection and its text-encoder/VAE classes fix (docs/dit-families.md, "Harness models").

  anima  Stable-diffusion/rand_anima.safetensors: the Anima (Cosmos-Predict2) DiT, 28 blocks x 2048, plus the
         LLM adapter, bare keys as ComfyUI's split `diffusion_models` files; NOT reducible: Neo's detection
         hard-codes num_blocks 28 and asserts model_channels 2048 (guess/detection.py:201-221 at de2193d).
         1.96 B + 0.13 B parameters, bf16 on disk (~4.2 GB).
         text_encoder/rand_qwen3_06b.safetensors: Qwen3-0.6B (`model.*` keys, 0.60 B, bf16; sizes are the
         hard-coded Qwen3_06BConfig, backend/nn/llm/llama.py:22-42).
         VAE/rand_wan21_vae.safetensors: the Wan 2.1 / Qwen-Image 3-D VAE (config: Neo's
         backend/huggingface/circlestone-labs/Anima/vae/config.json, base_dim 96), decoder output calibrated.
         Lora/rand_anima_lora.safetensors       DiT-only, Linear layers only, diffusion-pipe / ComfyUI PEFT keys
                                                (diffusion_model.blocks.N.<layer>.lora_A/lora_B.weight)
         Lora/rand_anima_te_lora.safetensors    kohya (sd-scripts) keys: lora_unet_blocks_N_*, the text encoder
                                                lora_te_layers_N_*, and the LLM adapter lora_unet_llm_adapter_*
                                                (Neo re-targets that part to the text encoder, networks.py:28-36)
         Lora/rand_anima_other_lora.safetensors a second DiT-only LoRA (the "unselected LoRA" case)
         Lora/rand_anima_norm_lora.safetensors  Linear LoRA plus `.diff` vectors on the blocks' q/k RMSNorms
                                                (a layer type PG must refuse with a note until it corrects it)
Memory: ~9 GB peak (anima). Time: ~2 min on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

NEO = os.path.realpath(os.environ.get("NEO") or os.path.expanduser("~/.cache/pg-fork-harness/forge_neo"))
WEBUI = os.path.join(NEO, "webui")
MODELS = os.path.join(WEBUI, "models")
PROMPTS = ["a photo of a cat", ""]


def neo_imports():
    """Neo's packages on sys.path (its own initialisation), without a server."""
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, WEBUI)
    os.chdir(WEBUI)
    from modules_forge.initialization import initialize_forge

    initialize_forge()


def save_sorted(tensors: dict, path: str, metadata: dict | None = None) -> None:
    """safetensors file with sorted header metadata (reproducible bytes)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def meta_layout(build) -> dict:
    """key -> shape of the module `build()` makes, built on the meta device with Neo's operations."""
    from backend.operations import using_forge_operations

    with torch.device("meta"), using_forge_operations(device=torch.device("meta"), dtype=torch.float32):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def is_norm(key: str, shape: tuple) -> bool:
    """A norm's scale: one non-trivial dimension, in a module named *norm* (or a Wan VAE `gamma`)."""
    module = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    numel = int(torch.tensor(shape).prod()) if shape else 1
    return len(shape) >= 1 and numel == max(shape) and (key.endswith("gamma") or ("norm" in module and key.endswith("weight")))


def random_tensors(layout: dict, seed: int, dtype=torch.bfloat16, embed_std: float = 0.02) -> dict:
    """Seeded values: norm scales 1 (+1 % noise), biases small, matrices N(0, 1/fan_in), embeddings N(0, embed_std)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        if is_norm(key, shape):
            value = 1 + 0.01 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            value = 0.01 * torch.randn(shape, generator=gen)
        elif "embed_tokens" in key or key.endswith("pad_token"):
            value = embed_std * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = int(torch.tensor(shape[1:]).prod())
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        else:
            value = 0.02 * torch.randn(shape, generator=gen)
        out[key] = value.to(dtype)
    return out


# -- LoRAs ----------------------------------------------------------------------------------------

def lora_pair(shape: tuple, rank: int, move: float, gen: torch.Generator) -> tuple:
    """(down, up) with up @ down ~ `move` x the element std of an N(0, 1/fan_in) weight (alpha = rank)."""
    out_f, in_f = shape[0], int(torch.tensor(shape[1:]).prod())
    down = torch.randn(rank, in_f, generator=gen) / in_f ** 0.5
    # element of up @ down: sum of `rank` products ~ up_std * sqrt(rank / in_f); target move / sqrt(in_f)
    up = torch.randn(out_f, rank, generator=gen) * (move / rank ** 0.5)
    return down, up


def peft_lora(targets: dict, rank: int, move: float, seed: int, prefix: str = "diffusion_model.") -> dict:
    """diffusion-pipe / ComfyUI form: <prefix><path>.lora_A.weight (down), .lora_B.weight (up), .alpha."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for path, shape in targets.items():
        down, up = lora_pair(shape, rank, move, gen)
        out[f"{prefix}{path}.lora_A.weight"] = down.to(torch.bfloat16)
        out[f"{prefix}{path}.lora_B.weight"] = up.to(torch.bfloat16)
        out[f"{prefix}{path}.alpha"] = torch.tensor(float(rank))
    return out


def kohya_lora(targets: dict, rank: int, move: float, seed: int) -> dict:
    """sd-scripts form: <kohya name>.lora_down.weight, .lora_up.weight, .alpha (names already kohya'd)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in targets.items():
        down, up = lora_pair(shape, rank, move, gen)
        out[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
        out[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def pick(layout: dict, blocks: range, layers: tuple, prefix: str = "blocks.") -> dict:
    """path (no .weight) -> shape of the 2-D weights of `layers` in `blocks`."""
    out = {}
    for key, shape in layout.items():
        if not key.endswith(".weight") or len(shape) != 2:
            continue
        path = key[: -len(".weight")]
        for b in blocks:
            if path.startswith(f"{prefix}{b}.") and any(path.endswith(layer) for layer in layers):
                out[path] = shape
    return out


# -- Anima -------------------------------------------------------------------------------------------

ANIMA_CONFIG = dict(  # what guess/detection.py:201-221 (de2193d) returns for any Anima file
    in_channels=16, out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=2048,
    concat_padding_mask=True, crossattn_emb_channels=1024, adaln_lora_dim=256, num_blocks=28, num_heads=16,
    rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0)
ANIMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
                 "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
                 "mlp.layer1", "mlp.layer2")


def calibrate_wan_vae(sd: dict, config: dict) -> float:
    """Scale the decoder's last conv so a random latent decodes to std 0.5 (no saturated images)."""
    from backend.nn.wan_vae import WanVAE
    from backend.operations import using_forge_operations

    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        vae = WanVAE(**{k: v for k, v in config.items() if not k.startswith("_") and k not in ("latents_mean", "latents_std")})
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    head = [k for k in sd if k.startswith("decoder.head.") and k.endswith(".weight") and sd[k].ndim == 5][-1]
    z = torch.randn(1, config["z_dim"], 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        std = float(vae.decode(z).std())
    bias = head[: -len("weight")] + "bias"
    sd[head] = (sd[head].float() * (0.5 / std)).to(sd[head].dtype)
    sd[bias] = (sd[bias].float() * (0.5 / std)).to(sd[bias].dtype)
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    with torch.no_grad():
        return float(vae.decode(z).std())


def make_anima(force: bool) -> list[str]:
    from backend.nn.anima import Anima
    from backend.nn.llm.llama import Qwen3_06B
    from backend.nn.wan_vae import WanVAE

    paths = {
        "dit": os.path.join(MODELS, "Stable-diffusion", "rand_anima.safetensors"),
        "te": os.path.join(MODELS, "text_encoder", "rand_qwen3_06b.safetensors"),
        "vae": os.path.join(MODELS, "VAE", "rand_wan21_vae.safetensors"),
        "lora": os.path.join(MODELS, "Lora", "rand_anima_lora.safetensors"),
        "te_lora": os.path.join(MODELS, "Lora", "rand_anima_te_lora.safetensors"),
        "other": os.path.join(MODELS, "Lora", "rand_anima_other_lora.safetensors"),
        "norm": os.path.join(MODELS, "Lora", "rand_anima_norm_lora.safetensors"),
    }
    written = []
    dit_layout = meta_layout(lambda: Anima(**ANIMA_CONFIG))
    te_full = meta_layout(lambda: Qwen3_06B({}))
    te_layout = {k: v for k, v in te_full.items() if k.startswith("model.")}
    adapter_layout = {k: v for k, v in te_full.items() if k.startswith("llm_adapter.")}

    if force or not os.path.exists(paths["dit"]):
        t0 = time.time()
        sd = random_tensors(dit_layout, seed=101)
        sd.update(random_tensors(adapter_layout, seed=102, embed_std=1.0))  # Neo moves llm_adapter.* to the TE
        save_sorted(sd, paths["dit"], {"pg_harness": "anima dit, random"})
        written.append(f"{paths['dit']} ({sum(v.numel() for v in sd.values()) / 1e9:.2f} B params, {time.time() - t0:.0f}s)")
        del sd
    if force or not os.path.exists(paths["te"]):
        sd = random_tensors(te_layout, seed=103)
        save_sorted(sd, paths["te"], {"pg_harness": "qwen3-0.6b, random"})
        written.append(f"{paths['te']} ({sum(v.numel() for v in sd.values()) / 1e9:.2f} B params)")
        del sd
    if force or not os.path.exists(paths["vae"]):
        config = json.load(open(os.path.join(WEBUI, "backend", "huggingface", "circlestone-labs", "Anima", "vae", "config.json")))
        kwargs = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("latents_mean", "latents_std")}
        layout = meta_layout(lambda: WanVAE(**kwargs))
        sd = random_tensors(layout, seed=104, dtype=torch.float32)
        std = calibrate_wan_vae(sd, config)
        save_sorted({k: v.to(torch.bfloat16) for k, v in sd.items()}, paths["vae"], {"pg_harness": "wan2.1 vae, random"})
        written.append(f"{paths['vae']} (decoded std {std:.2f})")

    blocks = range(ANIMA_CONFIG["num_blocks"])
    if force or not os.path.exists(paths["lora"]):
        save_sorted(peft_lora(pick(dit_layout, blocks, ANIMA_LINEARS), 4, 0.5, seed=201), paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["te_lora"]):
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in pick(dit_layout, blocks, ANIMA_LINEARS).items()}
        te = pick(te_layout, range(28), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                  prefix="model.layers.")
        targets.update({"lora_te_layers_" + p[len("model.layers."):].replace(".", "_"): s for p, s in te.items()})
        ad = pick(adapter_layout, range(6), ("q_proj", "k_proj", "v_proj", "o_proj"), prefix="llm_adapter.blocks.")
        targets.update({"lora_unet_" + p.replace(".", "_"): s for p, s in ad.items()})
        save_sorted(kohya_lora(targets, 4, 0.5, seed=202), paths["te_lora"])
        written.append(paths["te_lora"])
    if force or not os.path.exists(paths["other"]):
        save_sorted(peft_lora(pick(dit_layout, range(0, 28, 2), ANIMA_LINEARS[:4] + ANIMA_LINEARS[-2:]), 4, 0.5,
                              seed=203), paths["other"])
        written.append(paths["other"])
    if force or not os.path.exists(paths["norm"]):
        sd = peft_lora(pick(dit_layout, blocks, ANIMA_LINEARS[:4]), 4, 0.5, seed=204)
        gen = torch.Generator().manual_seed(205)
        for b in blocks:
            for norm in ("self_attn.q_norm", "self_attn.k_norm"):
                sd[f"diffusion_model.blocks.{b}.{norm}.diff"] = (0.2 * torch.randn(dit_layout[f"blocks.{b}.{norm}.weight"], generator=gen)).to(torch.bfloat16)
        save_sorted(sd, paths["norm"])
        written.append(paths["norm"])
    return written


FAMILIES = {"anima": make_anima}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    neo_imports()
    for line in FAMILIES[args.family](args.force):
        print("wrote", line, flush=True)


if __name__ == "__main__":
    main()
