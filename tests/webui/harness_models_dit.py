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
  lumina2  Stable-diffusion/rand_lumina2.safetensors: Neta-Lumina's NextDiT at Neo's fixed dim 2304 (24 heads, 8 kv
         heads: detection.py:54-60), ONE main layer (counted from the file) plus the 2 + 2 refiner layers the class
         always builds: 0.43 B. text_encoder/rand_gemma2_2b.safetensors: Gemma-2-2B (2.61 B, its RMSNorm weights
         around 0: Neo scales by 1 + w). VAE/rand_flux_vae.safetensors: Flux AutoencoderKL (Neo's config file).
         Lora/rand_lumina2_lora.safetensors        kohya (sd-scripts) keys lora_unet_layers_0_attention_qkv (the
                                                   fused qkv whole), _out, _feed_forward_w1/w2/w3, refiners too
         Lora/rand_lumina2_te_lora.safetensors     generic diffusion_model.* + text_encoders.gemma2.* (Neo keys its
                                                   Gemma `gemma2`, diffusion_engine/lumina.py:18) lora_A/lora_B
         Lora/rand_lumina2_other_lora.safetensors, Lora/rand_lumina2_norm_lora.safetensors (attention_norm1 diffs)
  chroma   Stable-diffusion/rand_chroma.safetensors: 1 double + 1 single block at the fixed 3072 width plus the
         approximator (detection.py:186-193), config from Neo's own huggingface_guess on the keys it reads: 0.63 B.
         text_encoder/rand_t5xxl_fp8.safetensors: the T5-XXL encoder (Neo's config file) in fp8, 4.76 B.
         LoRAs: kohya whole-fused (rand_chroma_lora), ai-toolkit/diffusers separate q/k/v/proj_mlp that Neo maps
         to slices of the fused qkv/linear1 (rand_chroma_diffusers_lora), kohya DiT + T5 lora_te1_* (te_lora),
         other, norm (query_norm diffs). NOTE: Neo at de2193d cannot load any Chroma checkpoint from a fresh
         tree (no Chroma tokenizer.json: docs/dit-families.md §5.5).
  zimage   Stable-diffusion/rand_zimage.safetensors: Z-Image's NextDiT at Neo's fixed dim 3840 (30 heads:
         detection.py:61-64), ONE main layer plus the 2 + 2 refiners: 0.91 B. text_encoder/rand_qwen3_4b_fp8.safetensors:
         Qwen3-4B (4.02 B) in fp8, as users run it (Neo keeps fp8 storage for an fp8 file). VAE: the Flux one above.
         Lora/rand_zimage_lora.safetensors (kohya, fused qkv whole), rand_zimage_diffusers_lora (diffusers /
         ai-toolkit to_q/k/v, which Neo maps to slices of attention.qkv), rand_zimage_te_lora (DiT + the fp8 Qwen3
         by generic text_encoders.qwen3.* keys), rand_zimage_other_lora, rand_zimage_norm_lora (attention_norm1 diffs).
Big files are streamed tensor by tensor (memory: the largest tensor, plus a VAE). Time: ~2 min each on 2 cores.
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


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float8_e4m3fn: "F8_E4M3"}


def stream_save(path: str, layout: dict, values, dtype=torch.bfloat16, metadata: dict | None = None) -> int:
    """A safetensors file written one tensor at a time (the format's header, then each tensor's bytes), so that
    a multi-GB model never sits in memory whole: `values` yields (key, tensor) in `layout`'s order."""
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {}, 0
    for key, shape in layout.items():
        n = int(torch.tensor(shape).prod()) * size if shape else size
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, count = path + ".tmp", 0
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for (key, tensor), expected in zip(values, layout):
            assert key == expected and tuple(tensor.shape) == tuple(layout[key]), (key, expected)
            f.write(tensor.to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            count += tensor.numel()
    os.replace(tmp, path)
    return count


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


def random_values(layout: dict, seed: int, dtype=torch.bfloat16, embed_std: float = 0.02, norm_center: float = 1.0):
    """(key, value) in layout order, seeded: norm scales `norm_center` (+1 % noise), biases small, matrices
    N(0, 1/fan_in), token embeddings N(0, embed_std)."""
    gen = torch.Generator().manual_seed(seed)
    for key, shape in layout.items():
        if is_norm(key, shape):
            value = norm_center + 0.01 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            value = 0.01 * torch.randn(shape, generator=gen)
        elif "embed_tokens" in key or key.endswith("pad_token"):
            value = embed_std * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = int(torch.tensor(shape[1:]).prod())
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        else:
            value = 0.02 * torch.randn(shape, generator=gen)
        yield key, value.to(dtype)


def random_tensors(layout: dict, seed: int, dtype=torch.bfloat16, **kwargs) -> dict:
    return dict(random_values(layout, seed, dtype, **kwargs))


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


def with_norm_diffs(sd: dict, layout: dict, wanted, seed: int) -> dict:
    """`sd` plus a `.diff` (0.2 · N(0, 1)) on every norm weight of `layout` that `wanted(key)` picks: the norm
    layers a LoRA trained with norms on patches (diffusion_model.<path>.diff, as kohya/LyCORIS write them)."""
    gen = torch.Generator().manual_seed(seed)
    for key, shape in layout.items():
        if wanted(key):
            sd["diffusion_model." + key[: -len(".weight")] + ".diff"] = (0.2 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    return sd


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


def family_paths(family: str, te: str, vae: str, loras: tuple) -> dict:
    """Where a family's files go: its DiT `rand_<family>`, the text encoder and VAE it needs, and its LoRAs
    `rand_<family>_<kind>_lora` under the harness's models dirs (kinds: "lora" is the plain DiT-only one)."""
    out = {"dit": os.path.join(MODELS, "Stable-diffusion", f"rand_{family}.safetensors"),
           "te": os.path.join(MODELS, "text_encoder", te), "vae": os.path.join(MODELS, "VAE", vae)}
    for kind in loras:
        name = f"rand_{family}_lora" if kind == "lora" else f"rand_{family}_{kind.replace('te_lora', 'te')}_lora"
        out[kind] = os.path.join(MODELS, "Lora", f"{name}.safetensors")
    return out


def make_anima(force: bool) -> list[str]:
    from backend.nn.anima import Anima
    from backend.nn.llm.llama import Qwen3_06B
    from backend.nn.wan_vae import WanVAE

    paths = family_paths("anima", "rand_qwen3_06b.safetensors", "rand_wan21_vae.safetensors",
                         ('lora', 'te_lora', 'other', 'norm'))
    written = []
    dit_layout = meta_layout(lambda: Anima(**ANIMA_CONFIG))
    te_full = meta_layout(lambda: Qwen3_06B({}))
    te_layout = {k: v for k, v in te_full.items() if k.startswith("model.")}
    adapter_layout = {k: v for k, v in te_full.items() if k.startswith("llm_adapter.")}

    if force or not os.path.exists(paths["dit"]):
        t0 = time.time()
        values = [random_values(dit_layout, seed=101), random_values(adapter_layout, seed=102, embed_std=1.0)]
        n = stream_save(paths["dit"], {**dit_layout, **adapter_layout}, (kv for gen in values for kv in gen),
                        metadata={"pg_harness": "anima dit, random"})  # Neo moves llm_adapter.* to the TE
        written.append(f"{paths['dit']} ({n / 1e9:.2f} B params, {time.time() - t0:.0f}s)")
    if force or not os.path.exists(paths["te"]):
        n = stream_save(paths["te"], te_layout, random_values(te_layout, seed=103), metadata={"pg_harness": "qwen3-0.6b, random"})
        written.append(f"{paths['te']} ({n / 1e9:.2f} B params)")
    if force or not os.path.exists(paths["vae"]):
        config = json.load(open(os.path.join(WEBUI, "backend", "huggingface", "circlestone-labs", "Anima", "vae", "config.json")))
        kwargs = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("latents_mean", "latents_std")}
        layout = meta_layout(lambda: WanVAE(**kwargs))
        sd = random_tensors(layout, seed=104, dtype=torch.float32)
        std = calibrate_wan_vae(sd, config)
        save_sorted({k: v.to(torch.bfloat16) for k, v in sd.items()}, paths["vae"], {"pg_harness": "wan2.1 vae, random"})
        written.append(f"{paths['vae']} (decoded std {std:.2f})")

    # every 5th block / 4th TE layer: Neo backs up each weight a LoRA patches (fp32 here) and the reference keeps
    # θ_ω of each; a LoRA on all 28 blocks' Linears (1.8 B weights) took the harness server to 22 GB (OOM, measured)
    blocks = range(0, ANIMA_CONFIG["num_blocks"], 5)
    if force or not os.path.exists(paths["lora"]):
        save_sorted(peft_lora(pick(dit_layout, blocks, ANIMA_LINEARS), 4, 0.5, seed=201), paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["te_lora"]):
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in pick(dit_layout, blocks, ANIMA_LINEARS).items()}
        te = pick(te_layout, range(0, 28, 4), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                  prefix="model.layers.")
        targets.update({"lora_te_layers_" + p[len("model.layers."):].replace(".", "_"): s for p, s in te.items()})
        ad = pick(adapter_layout, range(6), ("q_proj", "k_proj", "v_proj", "o_proj"), prefix="llm_adapter.blocks.")
        targets.update({"lora_unet_" + p.replace(".", "_"): s for p, s in ad.items()})
        save_sorted(kohya_lora(targets, 4, 0.5, seed=202), paths["te_lora"])
        written.append(paths["te_lora"])
    if force or not os.path.exists(paths["other"]):
        save_sorted(peft_lora(pick(dit_layout, range(0, 28, 7), ANIMA_LINEARS[:4] + ANIMA_LINEARS[-2:]), 4, 0.5,
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


# -- Lumina 2 (Neta-Lumina) ----------------------------------------------------------------------------

LUMINA_CONFIG = dict(  # guess/detection.py:43-60 (de2193d) for dim 2304; n_layers is counted from the file
    patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=1, qk_norm=True, n_heads=24, n_kv_heads=8,
    axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0, ffn_dim_multiplier=4.0)
LUMINA_LINEARS = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def calibrate_kl_vae(sd: dict, config: dict) -> float:
    """Scale the decoder's conv_out so a random latent decodes to std 0.5."""
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.operations import using_forge_operations

    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        vae = IntegratedAutoencoderKL.from_config(config)
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    z = torch.randn(1, config["latent_channels"], 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        std = float(vae.decode(z).std())
    for key in ("decoder.conv_out.weight", "decoder.conv_out.bias"):
        sd[key] = (sd[key].float() * (0.5 / std)).to(sd[key].dtype)
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    with torch.no_grad():
        return float(vae.decode(z).std())


def make_lumina2(force: bool) -> list[str]:
    from backend.nn.llm.llama import Gemma2_2B
    from backend.nn.lumina import NextDiT
    from backend.nn.vae import IntegratedAutoencoderKL

    paths = family_paths("lumina2", "rand_gemma2_2b.safetensors", "rand_flux_vae.safetensors",
                         ('lora', 'te_lora', 'other', 'norm'))
    written = []
    dit_layout = meta_layout(lambda: NextDiT(**LUMINA_CONFIG))
    te_layout = meta_layout(lambda: Gemma2_2B({}))
    if force or not os.path.exists(paths["dit"]):
        n = stream_save(paths["dit"], dit_layout, random_values(dit_layout, seed=301),
                        metadata={"pg_harness": "lumina2 dit, random, 1 layer"})
        written.append(f"{paths['dit']} ({n / 1e9:.2f} B params)")
    if force or not os.path.exists(paths["te"]):
        # Gemma's RMSNorms scale by 1 + w (llama.py:363-366): w around 0
        n = stream_save(paths["te"], te_layout, random_values(te_layout, seed=303, norm_center=0.0),
                        metadata={"pg_harness": "gemma-2-2b, random"})
        written.append(f"{paths['te']} ({n / 1e9:.2f} B params)")
    if force or not os.path.exists(paths["vae"]):
        config = IntegratedAutoencoderKL.load_config(os.path.join(WEBUI, "backend", "huggingface", "neta-art", "Neta-Lumina", "vae"))
        layout = meta_layout(lambda: IntegratedAutoencoderKL.from_config(config))
        sd = random_tensors(layout, seed=304, dtype=torch.float32)
        std = calibrate_kl_vae(sd, config)
        save_sorted({k: v.to(torch.bfloat16) for k, v in sd.items()}, paths["vae"], {"pg_harness": "flux vae, random"})
        written.append(f"{paths['vae']} (decoded std {std:.2f})")

    groups = {"layers.": range(LUMINA_CONFIG["n_layers"]), "noise_refiner.": range(2), "context_refiner.": range(2)}

    def linears(which=LUMINA_LINEARS):
        out = {}
        for prefix, blocks in groups.items():
            out.update(pick(dit_layout, blocks, which, prefix=prefix))
        return out

    if force or not os.path.exists(paths["lora"]):  # sd-scripts (kohya) form, the fused qkv whole
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in linears().items()}
        save_sorted(kohya_lora(targets, 4, 0.5, seed=401), paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["te_lora"]):  # DiT (generic diffusion_model.) + Gemma (generic text_encoders.)
        sd = peft_lora(linears(), 4, 0.5, seed=402)
        te = pick(te_layout, range(0, 26, 5), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                  prefix="model.layers.")  # every 5th layer: each patched weight is backed up (fp32 here)
        # Neo keys its Gemma as `gemma2` (diffusion_engine/lumina.py:18): generic `text_encoders.gemma2.` keys only
        sd.update(peft_lora(te, 4, 0.5, seed=403, prefix="text_encoders.gemma2."))
        save_sorted(sd, paths["te_lora"])
        written.append(paths["te_lora"])
    if force or not os.path.exists(paths["other"]):
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in linears(LUMINA_LINEARS[1:]).items()}
        save_sorted(kohya_lora(targets, 4, 0.5, seed=404), paths["other"])
        written.append(paths["other"])
    if force or not os.path.exists(paths["norm"]):
        sd = with_norm_diffs(peft_lora(linears(LUMINA_LINEARS[:2]), 4, 0.5, seed=405), dit_layout,
                             lambda key: key.endswith("attention_norm1.weight"), seed=406)
        save_sorted(sd, paths["norm"])
        written.append(paths["norm"])
    return written


# -- Chroma -----------------------------------------------------------------------------------------------

def chroma_layout(double: int = 1, single: int = 1) -> tuple[dict, dict, set]:
    """(config Neo's detection gives, key -> shape, names of the RMSNorm modules) for a Chroma DiT with
    `double` / `single` blocks: the config comes from Neo's own `huggingface_guess.guess` run on the few keys
    it reads (guess/detection.py:131-198), the layout from the class it names, built on the meta device."""
    import huggingface_guess
    from backend.nn.chroma import IntegratedChromaTransformer2DModel
    from backend.operations import using_forge_operations

    probe = {"img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096), "distilled_guidance_layer.norms.0.scale": (5120,),
             "final_layer.linear.weight": (64, 3072), "distilled_guidance_layer.in_proj.weight": (5120, 64)}  # > 5 keys: prefix
    for b in range(double):
        probe[f"double_blocks.{b}.img_attn.norm.key_norm.scale"] = (128,)
    for b in range(single):
        probe[f"single_blocks.{b}.linear2.weight"] = (3072, 15360)
    guess = huggingface_guess.guess({"model.diffusion_model." + k: torch.empty(v, device="meta") for k, v in probe.items()})
    assert guess.huggingface_repo == "Chroma", guess.huggingface_repo
    config = dict(guess.unet_config)
    with torch.device("meta"), using_forge_operations(device=torch.device("meta"), dtype=torch.float32):
        model = IntegratedChromaTransformer2DModel(**config)
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.RMSNorm)}
    return config, {k: tuple(v.shape) for k, v in model.state_dict().items()}, norms


def t5_layout(repo: str) -> dict:
    """The T5 encoder Neo builds from its own config file for `repo` (loader.py:325-350), as a standalone
    text-encoder file names it (no `transformer.` prefix, no `logit_scale`)."""
    from backend.nn.t5 import IntegratedT5
    from backend.utils import read_arbitrary_config

    config = read_arbitrary_config(os.path.join(WEBUI, "backend", "huggingface", repo, "text_encoder"))
    layout = meta_layout(lambda: IntegratedT5(config))
    return {k[len("transformer."):]: v for k, v in layout.items() if k.startswith("transformer.")}


def make_chroma(force: bool) -> list[str]:
    from modules_forge.packages.comfy.utils import flux_to_diffusers

    paths = family_paths("chroma", "rand_t5xxl_fp8.safetensors", "rand_flux_vae.safetensors",
                         ('lora', 'diffusers', 'te_lora', 'other', 'norm'))
    written = []
    config, dit_layout, norms = chroma_layout()
    # checkpoints name Flux-style RMSNorm parameters `scale` (Neo renames them at load, operations.py:315-317)
    file_layout = {(k[: -len("weight")] + "scale" if k.rsplit(".", 1)[0] in norms else k): v for k, v in dit_layout.items()}
    if force or not os.path.exists(paths["dit"]):
        values = ((f, v) for f, (_, v) in zip(file_layout, random_values(dit_layout, seed=501)))
        n = stream_save(paths["dit"], file_layout, values, metadata={"pg_harness": "chroma dit, random, 1 + 1 blocks"})
        written.append(f"{paths['dit']} ({n / 1e9:.2f} B params)")
    te_layout = t5_layout("Chroma")
    if force or not os.path.exists(paths["te"]):  # T5-XXL's 4.8 B in fp8: Neo keeps fp8 storage (loader.py:330-344)
        n = stream_save(paths["te"], te_layout, random_values(te_layout, seed=503, embed_std=1.0), dtype=torch.float8_e4m3fn,
                        metadata={"pg_harness": "t5-xxl encoder, random, fp8"})
        written.append(f"{paths['te']} ({n / 1e9:.2f} B params)")
    if not os.path.exists(paths["vae"]):
        written += [w for w in make_lumina2(False) if "flux_vae" in w]  # the same Flux VAE config (checked)

    def kohya(which, blocks_double=range(1), blocks_single=range(1)):
        out = {}
        out.update(pick(dit_layout, blocks_double, which, prefix="double_blocks."))
        out.update(pick(dit_layout, blocks_single, which, prefix="single_blocks."))
        return {"lora_unet_" + p.replace(".", "_"): shape for p, shape in out.items()}

    fused = ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0",
             "txt_mlp.2", "linear1", "linear2")
    if force or not os.path.exists(paths["lora"]):  # kohya (sd-scripts / musubi): whole fused qkv and linear1
        save_sorted(kohya_lora(kohya(fused), 4, 0.5, seed=601), paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["diffusers"]):  # ai-toolkit / diffusers: separate q/k/v = slices for Neo
        mapping = flux_to_diffusers(config)
        targets = {}
        for key, target in mapping.items():
            if not key.endswith(".weight") or not isinstance(target, tuple) or not any(
                    part in key for part in (".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".attn.add_q_proj.", ".attn.add_k_proj.", ".attn.add_v_proj.", ".proj_mlp.")):
                continue
            name, (dim, start, length) = target[0], target[1]
            targets["transformer." + key[: -len(".weight")]] = (length, dit_layout[name][1])
        save_sorted(peft_lora(targets, 4, 0.5, seed=602, prefix=""), paths["diffusers"])
        written.append(paths["diffusers"])
    if force or not os.path.exists(paths["te_lora"]):  # kohya T5 keys lora_te1_* (comfy/lora.py:159-171) + DiT
        targets = kohya(fused)
        te = {k[: -len(".weight")]: v for k, v in te_layout.items()
              if k.endswith(".weight") and len(v) == 2 and ".block." in k and any(p in k for p in (".q.", ".k.", ".v.", ".o."))}
        targets.update({"lora_te1_" + p.replace(".", "_"): shape for p, shape in te.items()})
        save_sorted(kohya_lora(targets, 4, 0.5, seed=603), paths["te_lora"])
        written.append(paths["te_lora"])
    if force or not os.path.exists(paths["other"]):
        save_sorted(kohya_lora(kohya(fused[1:4] + fused[-1:]), 4, 0.5, seed=604), paths["other"])
        written.append(paths["other"])
    if force or not os.path.exists(paths["norm"]):
        sd = with_norm_diffs(kohya_lora(kohya(("img_attn.proj", "linear2")), 4, 0.5, seed=605), dit_layout,
                             lambda key: key.endswith("query_norm.weight") and key.startswith("double_blocks."), seed=606)
        save_sorted(sd, paths["norm"])
        written.append(paths["norm"])
    return written


# -- Z-Image -----------------------------------------------------------------------------------------------

def make_zimage(force: bool) -> list[str]:
    import huggingface_guess
    from backend.nn.llm.llama import Qwen3_4B
    from backend.nn.lumina import NextDiT
    from modules_forge.packages.comfy.utils import z_image_to_diffusers

    paths = family_paths("zimage", "rand_qwen3_4b_fp8.safetensors", "rand_flux_vae.safetensors",
                         ('lora', 'diffusers', 'te_lora', 'other', 'norm'))
    # the config Neo's detection gives (detection.py:43-72) for the keys it reads, one main layer
    probe = {"cap_embedder.1.weight": (3840, 2560), "noise_refiner.0.attention.k_norm.weight": (128,),
             "layers.0.attention.qkv.weight": (11520, 3840), "cap_pad_token": (1, 3840), "x_pad_token": (1, 3840),
             "x_embedder.weight": (3840, 64)}
    guess = huggingface_guess.guess({"model.diffusion_model." + k: torch.empty(v, device="meta") for k, v in probe.items()})
    assert guess.huggingface_repo == "Tongyi-MAI/Z-Image-Turbo", guess.huggingface_repo
    config = dict(guess.unet_config)
    written = []
    dit_layout = meta_layout(lambda: NextDiT(**config))
    if force or not os.path.exists(paths["dit"]):
        n = stream_save(paths["dit"], dit_layout, random_values(dit_layout, seed=701, embed_std=1.0),
                        metadata={"pg_harness": "z-image dit, random, 1 layer"})
        written.append(f"{paths['dit']} ({n / 1e9:.2f} B params)")
    te_layout = {k: v for k, v in meta_layout(lambda: Qwen3_4B({})).items() if k.startswith("model.")}
    if force or not os.path.exists(paths["te"]):  # Qwen3-4B's 4.0 B in fp8 (Neo keeps fp8 storage, loader.py:286-290)
        n = stream_save(paths["te"], te_layout, random_values(te_layout, seed=703), dtype=torch.float8_e4m3fn,
                        metadata={"pg_harness": "qwen3-4b, random, fp8"})
        written.append(f"{paths['te']} ({n / 1e9:.2f} B params)")
    if not os.path.exists(paths["vae"]):
        written += [w for w in make_lumina2(False) if "flux_vae" in w]

    groups = {"layers.": range(1), "noise_refiner.": range(2), "context_refiner.": range(2)}

    def linears(which=LUMINA_LINEARS):
        out = {}
        for prefix, blocks in groups.items():
            out.update(pick(dit_layout, blocks, which, prefix=prefix))
        return out

    if force or not os.path.exists(paths["lora"]):  # kohya: the fused qkv whole
        save_sorted(kohya_lora({"lora_unet_" + p.replace(".", "_"): s for p, s in linears().items()}, 4, 0.5, seed=801),
                    paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["diffusers"]):  # diffusers / ai-toolkit: to_q/k/v = slices of attention.qkv
        targets = {}
        for key, target in z_image_to_diffusers(config).items():
            if key.endswith(".weight") and isinstance(target, tuple):
                targets["diffusion_model." + key[: -len(".weight")]] = (target[1][2], dit_layout[target[0]][1])
            elif key.endswith(("to_out.0.weight", "feed_forward.w2.weight")):
                targets["diffusion_model." + key[: -len(".weight")]] = dit_layout[target]
        save_sorted(peft_lora(targets, 4, 0.5, seed=802, prefix=""), paths["diffusers"])
        written.append(paths["diffusers"])
    if force or not os.path.exists(paths["other"]):
        save_sorted(kohya_lora({"lora_unet_" + p.replace(".", "_"): s for p, s in linears(LUMINA_LINEARS[1:]).items()},
                               4, 0.5, seed=803), paths["other"])
        written.append(paths["other"])
    if force or not os.path.exists(paths["te_lora"]):  # DiT + Qwen3-4B (fp8 in the harness, as users run it)
        sd = peft_lora(linears(), 4, 0.5, seed=804)
        te = pick(te_layout, range(0, 36, 7), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                  prefix="model.layers.")
        # Neo keys Z-Image's text encoder `qwen3` (diffusion_engine/zimage.py): generic `text_encoders.qwen3.` keys
        sd.update(peft_lora(te, 4, 0.5, seed=805, prefix="text_encoders.qwen3."))
        save_sorted(sd, paths["te_lora"])
        written.append(paths["te_lora"])
    if force or not os.path.exists(paths["norm"]):  # a Linear LoRA plus diffs on the refiners' RMSNorms
        sd = with_norm_diffs(peft_lora(linears(LUMINA_LINEARS[:2]), 4, 0.5, seed=806), dit_layout,
                             lambda key: key.endswith("attention_norm1.weight"), seed=807)
        save_sorted(sd, paths["norm"])
        written.append(paths["norm"])
    return written


# -- Wan 2.1 (as an image model) ----------------------------------------------------------------------

# Neo builds UMT5-XXL from the config file under its tree (loader.py:325, :346-350); the harness's own copy
# with fewer layers is laid over that tree by start.sh (HF_OVERLAY), never written into it
OVERLAY = os.path.join(NEO, "hf-overlay")
WAN_REPO = os.path.join("Wan-AI", "Wan2.1-T2V-14B")
WAN_TE_LAYERS = 2
WAN_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def wan_te_config() -> tuple[str, dict]:
    """Neo's UMT5-XXL config for Wan with `WAN_TE_LAYERS` encoder layers: (overlay dir it goes to, config)."""
    with open(os.path.join(WEBUI, "backend", "huggingface", WAN_REPO, "text_encoder", "config.json")) as f:
        config = json.load(f)
    config.update(num_layers=WAN_TE_LAYERS, num_decoder_layers=WAN_TE_LAYERS)
    return os.path.join(OVERLAY, WAN_REPO, "text_encoder"), config


def make_wan(force: bool) -> list[str]:
    import huggingface_guess
    from backend.nn.t5 import IntegratedT5
    from backend.nn.wan import WanModel

    paths = family_paths("wan", "rand_umt5xxl_2layers_fp8.safetensors", "rand_wan21_vae.safetensors",
                         ('lora', 'peft', 'other', 'norm', 'conv3d'))
    written = []
    overlay_dir, te_config = wan_te_config()
    if force or not os.path.exists(os.path.join(overlay_dir, "config.json")):
        os.makedirs(overlay_dir, exist_ok=True)
        with open(os.path.join(overlay_dir, "config.json"), "w") as f:
            json.dump(te_config, f, indent=2)
        written.append(os.path.join(overlay_dir, "config.json") + f" (UMT5-XXL, {WAN_TE_LAYERS} layers)")
    # a 2-block DiT of width 256 (Neo's detection sets heads = dim / 128, detection.py:80-105); checked below to be
    # what Neo's own detection reads back from the file's keys, so the server builds exactly this model
    config = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=256, ffn_dim=512, freq_dim=256, out_dim=16,
                  num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
    dit_layout = meta_layout(lambda: WanModel(**config))
    guess = huggingface_guess.guess({"model.diffusion_model." + k: torch.empty(v, device="meta") for k, v in dit_layout.items()})
    assert guess.huggingface_repo == "Wan-AI/Wan2.1-T2V-14B", guess.huggingface_repo
    assert all(guess.unet_config.get(k) == v for k, v in config.items()), (guess.unet_config, config)
    if force or not os.path.exists(paths["dit"]):
        n = stream_save(paths["dit"], dit_layout, random_values(dit_layout, seed=901),
                        metadata={"pg_harness": "wan2.1 t2v dit, random, 2 blocks x 256"})
        written.append(f"{paths['dit']} ({n / 1e9:.3f} B params)")
    te_layout = {k[len("transformer."):]: v for k, v in meta_layout(lambda: IntegratedT5(te_config)).items()
                 if k.startswith("transformer.")}
    if force or not os.path.exists(paths["te"]):  # fp8, as Wan users run UMT5 (Neo keeps fp8 storage, loader.py:330-344)
        n = stream_save(paths["te"], te_layout, random_values(te_layout, seed=903, embed_std=1.0), dtype=torch.float8_e4m3fn,
                        metadata={"pg_harness": f"umt5-xxl encoder, {WAN_TE_LAYERS} layers, random, fp8"})
        written.append(f"{paths['te']} ({n / 1e9:.2f} B params)")
    if not os.path.exists(paths["vae"]):  # Wan 2.1's VAE config is Anima's (checked: only the class names differ)
        written += [w for w in make_anima(False) if "wan21_vae" in w]

    blocks = range(config["num_layers"])
    if force or not os.path.exists(paths["lora"]):  # musubi-tuner / sd-scripts: lora_unet_blocks_N_*
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in pick(dit_layout, blocks, WAN_LINEARS).items()}
        save_sorted(kohya_lora(targets, 4, 0.5, seed=1001), paths["lora"])
        written.append(paths["lora"])
    if force or not os.path.exists(paths["peft"]):  # diffusion-pipe / ComfyUI: diffusion_model.blocks.N.*.lora_A/B
        save_sorted(peft_lora(pick(dit_layout, blocks, WAN_LINEARS), 4, 0.5, seed=1002), paths["peft"])
        written.append(paths["peft"])
    if force or not os.path.exists(paths["other"]):
        targets = {"lora_unet_" + p.replace(".", "_"): s for p, s in pick(dit_layout, blocks, WAN_LINEARS[2:]).items()}
        save_sorted(kohya_lora(targets, 4, 0.5, seed=1003), paths["other"])
        written.append(paths["other"])
    if force or not os.path.exists(paths["norm"]):  # Linears plus diffs on the q/k RMSNorms
        sd = with_norm_diffs(peft_lora(pick(dit_layout, blocks, WAN_LINEARS[:4]), 4, 0.5, seed=1004), dit_layout,
                             lambda key: key.endswith(("self_attn.norm_q.weight", "self_attn.norm_k.weight")), seed=1005)
        save_sorted(sd, paths["norm"])
        written.append(paths["norm"])
    if force or not os.path.exists(paths["conv3d"]):
        # as a LoRA extracted from a full fine-tune: Linears, the Conv3d patch embedding as a full `.diff` (+ `.diff_b`),
        # and `.diff` on the blocks' raw `modulation` parameters, which Neo never merges (docs/dit-families.md §4)
        sd = peft_lora(pick(dit_layout, blocks, WAN_LINEARS[:4]), 4, 0.5, seed=1006)
        gen = torch.Generator().manual_seed(1007)
        shape = dit_layout["patch_embedding.weight"]
        sd["diffusion_model.patch_embedding.diff"] = (0.3 * torch.randn(shape, generator=gen) / int(torch.tensor(shape[1:]).prod()) ** 0.5).to(torch.bfloat16)
        sd["diffusion_model.patch_embedding.diff_b"] = (0.01 * torch.randn(shape[0], generator=gen)).to(torch.bfloat16)
        for b in blocks:
            sd[f"diffusion_model.blocks.{b}.modulation.diff"] = (0.01 * torch.randn(dit_layout[f"blocks.{b}.modulation"], generator=gen)).to(torch.bfloat16)
        save_sorted(sd, paths["conv3d"])
        written.append(paths["conv3d"])
    return written


FAMILIES = {"anima": make_anima, "lumina2": make_lumina2, "chroma": make_chroma, "zimage": make_zimage, "wan": make_wan}


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
