"""Extra network files for the real-WebUI tests and the benchmark, derived from the harness LoRA.

Run with the harness venv (needs torch + safetensors):  $HARNESS/venv/bin/python tests/webui/harness_models.py
Writes into $HARNESS/webui/models/Lora/ (idempotent):
  pg_other_lora.safetensors  a second kohya LoRA: rand_lora's up weights negated and scaled by 0.7,
                             the down weights' rows permuted (a different, deterministic LoRA)
  pg_loha.safetensors        LoHa (hada_w1_a/b = LoRA up/down, hada_w2_a/b = ones): same delta as rand_lora
  pg_full.safetensors        full-diff ('diff' = up @ down * alpha / rank): same delta, dense file
  pg_unet_only.safetensors   rand_lora's UNet modules only (lora_unet_*): the common SDXL shape
  pg_te_only.safetensors     rand_lora's text-encoder modules only (lora_te*)
  <family>_unet_only.safetensors  the same UNet-only cut of rand_sd21v_lora / rand_sdxl_lora, where those exist
                             (tests/webui/harness_models_families.py makes them)
"""
from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import load_file, save_file


def lora_dir() -> str:
    harness = os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness")
    return os.path.join(harness, "webui", "models", "Lora")


def modules(sd: dict) -> dict:
    out: dict = {}
    for key, value in sd.items():
        base, _, rest = key.partition(".")
        out.setdefault(base, {})[rest] = value
    return out


def make(directory: str) -> list[str]:
    src = load_file(os.path.join(directory, "rand_lora.safetensors"))
    mods = modules(src)
    written = []
    other = {}
    for base, w in mods.items():
        down, up = w["lora_down.weight"], w["lora_up.weight"]
        perm = torch.arange(down.shape[0] - 1, -1, -1)
        other[f"{base}.lora_down.weight"] = down[perm].contiguous()
        other[f"{base}.lora_up.weight"] = (up * -0.7).to(up.dtype).contiguous()
        other[f"{base}.alpha"] = w["alpha"]
    loha, full = {}, {}
    for base, w in mods.items():
        down, up, alpha = w["lora_down.weight"], w["lora_up.weight"], w["alpha"]
        rank = down.shape[0]
        shape = (up.shape[0], down.shape[1]) + tuple(down.shape[2:])
        up2, down2 = up.reshape(up.shape[0], rank).float(), down.reshape(rank, -1).float()
        loha[f"{base}.hada_w1_a"] = up2.half().contiguous()
        loha[f"{base}.hada_w1_b"] = down2.half().contiguous()
        loha[f"{base}.hada_w2_a"] = torch.ones(up2.shape[0], 1, dtype=torch.float16)
        loha[f"{base}.hada_w2_b"] = torch.ones(1, down2.shape[1], dtype=torch.float16)
        loha[f"{base}.alpha"] = torch.tensor(1.0, dtype=torch.float16) * alpha.float().item()
        full[f"{base}.diff"] = ((up2 @ down2) * (alpha.float().item() / rank)).reshape(shape).half().contiguous()
    unet_only = {k: v for k, v in src.items() if k.startswith("lora_unet_")}
    te_only = {k: v for k, v in src.items() if k.startswith("lora_te")}
    for name, sd in (("pg_other_lora", other), ("pg_loha", loha), ("pg_full", full), ("pg_unet_only", unet_only),
                     ("pg_te_only", te_only)):
        path = os.path.join(directory, name + ".safetensors")
        if not os.path.exists(path):
            save_file(sd, path, metadata={"ss_network_module": "networks.lora", "pg_test": name})
            written.append(path)
    for family in ("rand_sd21v", "rand_sdxl"):
        source, path = (os.path.join(directory, f"{family}{suffix}.safetensors") for suffix in ("_lora", "_unet_only"))
        if os.path.exists(source) and not os.path.exists(path):
            unet_only = {k: v for k, v in load_file(source).items() if k.startswith("lora_unet_")}
            save_file(unet_only, path, metadata={"ss_network_module": "networks.lora", "pg_test": f"{family}_unet_only"})
            written.append(path)
    return written


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else lora_dir()
    for path in make(d):
        print("wrote", path)
