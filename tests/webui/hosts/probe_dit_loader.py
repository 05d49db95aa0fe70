"""A DiT harness model through Forge Neo's OWN loader, no server (issue 18, item 3).

Run in the Neo harness venv from its webui/ (memory: the model's size, e.g. Anima ~12.5 GB in fp32: inside the
WebUI lock, or with a low-precision text encoder flag):

    cd ~/.cache/pg-fork-harness/forge_neo/webui
    OMP_NUM_THREADS=1 ../venv/bin/python $PG/tests/webui/hosts/probe_dit_loader.py anima [Neo flags, e.g. --fp32-unet --bf16-text-enc]

Checks, printing PASS/FAIL (exit 1 on a FAIL): `backend.loader.forge_loader(checkpoint, [text encoder, VAE])`
(what Neo runs for the checkpoint and the "VAE / Text Encoder" selection) gives the family's engine; the prompt
encodes; one DiT call on two rows gives a finite output of the latent's shape; the VAE decodes to a non-flat
image; every LoRA file of the family (tests/webui/harness_models_dit.py) goes through Neo's
`networks.load_lora_for_models` with none of its keys left unmatched, patching the DiT (and the text encoder
where the file has such keys). Times and sizes are printed for docs/dit-families.md §5.3.
"""
import os
import resource
import sys
import time

FAMILIES = {  # family -> (engine class, checkpoint, modules, LoRAs (name, patches the TE too))
    "anima": ("Anima", "rand_anima.safetensors", ["text_encoder/rand_qwen3_06b.safetensors", "VAE/rand_wan21_vae.safetensors"],
              [("rand_anima_lora", False), ("rand_anima_te_lora", True), ("rand_anima_other_lora", False),
               ("rand_anima_norm_lora", False)]),
    "lumina2": ("Lumina2", "rand_lumina2.safetensors", ["text_encoder/rand_gemma2_2b.safetensors", "VAE/rand_flux_vae.safetensors"],
                [("rand_lumina2_lora", False), ("rand_lumina2_te_lora", True), ("rand_lumina2_other_lora", False),
                 ("rand_lumina2_norm_lora", False)]),
    "chroma": ("Chroma", "rand_chroma.safetensors", ["text_encoder/rand_t5xxl_fp8.safetensors", "VAE/rand_flux_vae.safetensors"],
               [("rand_chroma_lora", False), ("rand_chroma_diffusers_lora", False), ("rand_chroma_te_lora", True),
                ("rand_chroma_other_lora", False), ("rand_chroma_norm_lora", False)]),
    "zimage": ("ZImage", "rand_zimage.safetensors", ["text_encoder/rand_qwen3_4b_fp8.safetensors", "VAE/rand_flux_vae.safetensors"],
               [("rand_zimage_lora", False), ("rand_zimage_diffusers_lora", False), ("rand_zimage_te_lora", True),
                ("rand_zimage_other_lora", False), ("rand_zimage_norm_lora", False)]),
    # Wan's UMT5 has 2 layers through the harness's own config file: run from the overlay tree that
    # `HF_OVERLAY=$NEO/hf-overlay` makes at a server start ($NEO/webui-overlay, tests/webui/hosts/common.sh)
    "wan": ("Wan", "rand_wan.safetensors", ["text_encoder/rand_umt5xxl_2layers_fp8.safetensors", "VAE/rand_wan21_vae.safetensors"],
            [("rand_wan_lora", False), ("rand_wan_peft_lora", False), ("rand_wan_other_lora", False),
             ("rand_wan_norm_lora", False), ("rand_wan_conv3d_lora", False)]),
}
family = sys.argv[1] if len(sys.argv) > 1 else ""
if family not in FAMILIES:
    sys.exit(f"usage: probe_dit_loader.py {{{','.join(FAMILIES)}}} [Neo flags]")
ENGINE, CKPT, MODULES, LORAS = FAMILIES[family]
sys.argv = [sys.argv[0], "--cpu", "--skip-torch-cuda-test", *sys.argv[2:]]
sys.path.insert(0, os.getcwd())

from modules_forge.initialization import initialize_forge  # noqa: E402

initialize_forge()
from modules import shared_init  # noqa: E402

shared_init.initialize()
from modules import processing  # noqa: E402,F401  (first: the samplers and sd_models import each other through it)
from modules.prompt_parser import SdConditioning  # noqa: E402

sys.path.insert(0, os.path.join(os.getcwd(), "extensions-builtin", "sd_forge_lora"))
import networks  # noqa: E402
import torch  # noqa: E402

from backend.loader import forge_loader  # noqa: E402

failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


models = os.path.join(os.getcwd(), "models")
t0 = time.time()
engine = forge_loader(os.path.join(models, "Stable-diffusion", CKPT), [os.path.join(models, m) for m in MODULES])
check("engine", type(engine).__name__ == ENGINE, f"{type(engine).__name__} in {time.time() - t0:.1f}s, peak RSS {rss_gb():.1f} GB")

with torch.inference_mode():
    t0 = time.time()
    cond = engine.get_learned_conditioning(SdConditioning(["a photo of a cat"], width=64, height=64))
    context = cond[0] if isinstance(cond, list) else cond
    context = context if context.dim() == 3 else context[None]
    check("encode", bool(torch.isfinite(context).all()), f"{tuple(context.shape)} std {float(context.std()):.3f} in {time.time() - t0:.1f}s")
    latent = torch.randn(2, 16, 1, 8, 8) if getattr(engine, "is_wan", False) else torch.randn(2, 16, 8, 8)
    t0 = time.time()
    out = engine.forge_objects.unet.model.apply_model(latent, torch.tensor([0.5, 0.5]), c_crossattn=torch.cat([context, context]))
    check("DiT call", tuple(out.shape) == tuple(latent.shape) and bool(torch.isfinite(out).all()),
          f"2 rows 64x64 px: std {float(out.std()):.3f} in {time.time() - t0:.1f}s")
    t0 = time.time()
    image = engine.decode_first_stage(latent[:1])
    check("VAE decode", float(image.std()) > 0.05 and bool(torch.isfinite(image).all()),
          f"{tuple(image.shape)} std {float(image.std()):.3f} in {time.time() - t0:.1f}s")

original = engine.forge_objects_original
for name, with_te in LORAS:
    state = networks.load_lora_state_dict(os.path.join(models, "Lora", f"{name}.safetensors"))
    modules = {k.rsplit(".", 2)[0] for k in state if ".lora_" in k} | {k[: -len(".diff")] for k in state if k.endswith(".diff")}
    unet, clip = networks.load_lora_for_models(original.unet, original.clip, state, 1.0, 1.0, filename=name)

    def added(after, before):  # (weights patched, patch entries added): slices of one fused weight are one entry each
        if after is before:
            return 0, 0
        count = lambda p: sum(len(v) for v in p.patches.values())  # noqa: E731
        return len(after.patches) - len(before.patches), count(after) - count(before)

    unet_keys, unet_entries = added(unet, original.unet)
    clip_keys, clip_entries = added(clip.patcher if clip is not original.clip else original.clip.patcher, original.clip.patcher)
    ok = unet_keys > 0 and (clip_keys > 0) == with_te and unet_entries + clip_entries == len(modules)
    check(f"LoRA {name}", ok, f"{len(modules)} modules -> {unet_entries} DiT entries on {unet_keys} weights, "
                              f"{clip_entries} text-encoder entries on {clip_keys} weights")
print(f"peak RSS {rss_gb():.1f} GB")
sys.exit(1 if failures else 0)
