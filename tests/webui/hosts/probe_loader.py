"""PG's LoRA selection against the fork's OWN LoRA loader (no server, no checkpoint), issue 17 item 1:
run in the fork's harness venv from its webui/ (`tests/webui/hosts/probe_loader.sh forge_neo|reforge`).

LoRAs of the shapes users have (full, UNet-only, text-encoder-only, partly matching, mostly unmatched, at
strength 0) are written as real safetensors files in kohya / generic key formats and loaded the way the
host's `load_networks` does: one host `load_lora_for_models` per LoRA from the original patchers (the host's
own function decides which patchers it clones and which keys it keeps). PG's adapter then tells the selected
LoRA's entries apart (`comfy.lora_owners`, replaying that loader) and gives θ' − θ_ω per layer. Reference:
the same loader run again with the selected LoRA at ω × strength, both chains merged by the host's own merge
(Neo `merge_lora_to_weight`, reForge `calculate_weight`).

Prints PASS/FAIL per case; exit 1 on any FAIL.
"""
import os
import sys
import tempfile
import types

HOST = sys.argv[1] if len(sys.argv) > 1 else "forge_neo"
PG_ROOT = os.environ["PG_EXT_DIR"]
sys.argv = [sys.argv[0], "--cpu", "--skip-torch-cuda-test"]
if HOST == "reforge":  # reForge's own flags (its args parser refuses Neo's --cpu)
    sys.argv = [sys.argv[0], "--always-cpu", "--skip-torch-cuda-test", "--no-half", "--precision", "full", "--use-cpu", "all"]
sys.path.insert(0, os.getcwd())

from modules_forge.initialization import initialize_forge  # noqa: E402

initialize_forge()
from modules import shared_init  # noqa: E402

shared_init.initialize()
from modules import processing  # noqa: E402,F401  (first: the samplers and sd_models import each other through it)

sys.path.insert(0, os.path.join(os.getcwd(), "extensions-builtin", "sd_forge_lora" if HOST == "forge_neo" else "Lora"))
import networks  # noqa: E402,F401  (the host's Lora extension module, imported before tests/host/double joins the path)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

sys.path[:0] = [PG_ROOT, os.path.join(PG_ROOT, "tests", "unit"), os.path.join(PG_ROOT, "tests", "host", "double")]
from pg_ext.deltas import LowRankDelta  # noqa: E402
from pg_hosts import comfy  # noqa: E402
from tiny_sd import TextLayers  # noqa: E402
from tiny_unet import TinyUNet  # noqa: E402

CPU = torch.device("cpu")

if HOST == "forge_neo":
    from backend.operations import ForgeOperations  # noqa: E402
    from backend.patcher.base import ModelPatcher  # noqa: E402
    from backend.patcher.clip import CLIP  # noqa: E402
    from backend.patcher.lora import merge_lora_to_weight  # noqa: E402
    from pg_hosts import forge_neo as adapter  # noqa: E402

    HOST_LINEAR = ForgeOperations.Linear

    def host_merge(entries, weight, key):
        return merge_lora_to_weight(entries, weight, key, computation_dtype=torch.float32)

    def host_patchers(unet, text):
        return ModelPatcher(Model(unet), CPU, CPU), CLIP({"clip_l": text})

    def clip_patcher(clip):
        return clip.patcher
elif HOST == "reforge":
    from ldm_patched.modules.lora import calculate_weight  # noqa: E402
    from ldm_patched.modules.model_patcher import ModelPatcher  # noqa: E402
    from ldm_patched.modules.ops import disable_weight_init  # noqa: E402
    from ldm_patched.modules.sd import CLIP  # noqa: E402
    from pg_hosts import reforge as adapter  # noqa: E402

    HOST_LINEAR = disable_weight_init.Linear

    def host_merge(entries, weight, key):
        return calculate_weight(entries, weight, key)

    def host_patchers(unet, text):
        """reForge's key maps read `diffusion_model.*` from the model's state dict and `model_config.unet_config`
        (lora.py:175-188; an empty config adds no diffusers names), and every `<name>.weight` of the CLIP's
        `cond_stage_model` as `text_encoders.<name>` (lora.py:97-101)."""
        model = Model(unet)
        model.model_config = types.SimpleNamespace(unet_config={})
        clip = CLIP(no_init=True)
        clip.cond_stage_model = nn.ModuleDict({"clip_l": text})
        clip.patcher = ModelPatcher(clip.cond_stage_model, CPU, CPU)
        # the attributes CLIP.__init__ sets and clone() copies (sd.py:172-185, :186-195)
        clip.tokenizer, clip.layer_idx, clip.tokenizer_options = None, None, {}
        clip.use_clip_schedule, clip.apply_hooks_to_conds = False, None
        return ModelPatcher(model, CPU, CPU), clip

    def clip_patcher(clip):
        return clip.patcher
else:
    raise SystemExit(f"probe_loader: no loader probe for {HOST!r} (Forge keeps LoRAs per file: probe_adapter.py)")

failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def host_linears(module):
    """The host's own Linear class in place of torch's, as the host builds its models."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            layer = HOST_LINEAR(child.in_features, child.out_features, bias=child.bias is not None)
            layer.load_state_dict(child.state_dict())
            setattr(module, name, layer.requires_grad_(False))
        else:
            host_linears(child)
    return module


class Model(nn.Module):
    """The patcher's model as the host's key maps read it: `diffusion_model`, its `config`, the repo name."""

    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        unet.config = {}  # no diffusers map for this tiny UNet: kohya and generic keys only
        self.config = types.SimpleNamespace(huggingface_repo="pg/tiny-unet")


class Objects:
    def __init__(self, unet, clip):
        self.unet, self.clip = unet, clip

    def shallow_copy(self):
        return Objects(self.unet, self.clip)


def lora_file(directory, name, unet, text, seed, unet_only=False, te_only=False, junk=0, junk_unet=0):
    """A LoRA on disk: kohya keys on the UNet's Linear/Conv2d layers, generic `text_encoders.` keys on the
    text model's Linears, plus `junk` keys that match nothing and `junk_unet` UNet-looking ones that don't."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}

    def add(prefix, layer):
        conv = isinstance(layer, nn.Conv2d)
        o, i = layer.weight.shape[0], layer.weight.shape[1]
        sd[f"{prefix}.lora_up.weight"] = torch.randn(*((o, 2, 1, 1) if conv else (o, 2)), generator=gen) * 0.2
        sd[f"{prefix}.lora_down.weight"] = torch.randn(*((2, i, *layer.kernel_size) if conv else (2, i)), generator=gen) * 0.2
        sd[f"{prefix}.alpha"] = torch.tensor(2.0)
    if not te_only:
        for n, layer in unet.named_modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                add("lora_unet_" + n.replace(".", "_"), layer)
    if not unet_only:
        for n, layer in text.named_modules():
            if isinstance(layer, nn.Linear):
                add(f"text_encoders.clip_l.{n}", layer)
    for k in range(junk):
        sd[f"lora_te9_nothing_{k}.lora_up.weight"] = torch.zeros(2, 2)
    for k in range(junk_unet):
        sd[f"lora_unet_missing_{k}.lora_up.weight"] = torch.zeros(2, 2)
        sd[f"lora_unet_missing_{k}.lora_down.weight"] = torch.zeros(2, 2)
    path = os.path.join(directory, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def load(original, targets):
    """The host's load_networks from the original patchers (Neo networks.py:132-150, reForge networks.py:98-104),
    with the host's loader (through the adapter's `load_one`, which calls it)."""
    unet, clip = original.unet, original.clip
    for target in targets:
        unet, clip = adapter.load_one(unet, clip, tuple(target))
    return Objects(unet, clip)


def merged(patcher, key):
    path, _, name = key.rpartition(".")
    base = getattr(patcher.model.get_submodule(path), name).detach().float().clone()
    return host_merge(patcher.patches.get(key, []), base, key)


def dense(layer, delta):
    if isinstance(delta, LowRankDelta):
        up, down = delta.up.flatten(1), delta.down.flatten(1)
        return (delta.scale * up @ down).reshape(layer.weight.shape)
    return delta.weight.float()


def case(name, directory, shapes, selected, omega):
    torch.manual_seed(0)
    unet = host_linears(TinyUNet(16, 12)).requires_grad_(False)
    text = host_linears(TextLayers()).requires_grad_(False)
    original = Objects(*host_patchers(unet, text))
    files = {n: lora_file(directory, f"{name}_{n}", unet, text, 10 + i, **kw) for i, (n, (_, kw)) in enumerate(shapes.items())}
    targets = [[files[n], s, s, False] for n, (s, _) in shapes.items()]
    sd_model = types.SimpleNamespace(forge_objects_original=original, current_lora_hash=str(targets))
    after = load(original, targets)
    sd_model.forge_objects = after
    nets = [types.SimpleNamespace(name=n, network_on_disk=types.SimpleNamespace(filename=files[n])) for n in shapes]
    chosen_nets = [n for n in nets if n.name in selected]
    owners = comfy.lora_owners(sd_model, adapter.load_one)
    chosen = comfy.chosen_targets(comfy.lora_targets(sd_model), chosen_nets)
    weak = load(original, [[f, s * omega if n in selected else s, s * omega if n in selected else s, o]
                           for (f, s, _, o), n in zip(targets, shapes)])
    worst, layers = 0.0, 0
    for part, owner_map, root in (("unet", owners.unet, after.unet), ("clip", owners.clip, clip_patcher(after.clip))):
        orig = original.unet if part == "unet" else clip_patcher(original.clip)
        weak_root = weak.unet if part == "unet" else clip_patcher(weak.clip)
        ids = comfy.selected_entries(root, orig, owner_map, chosen)
        deltas = adapter.patcher_deltas(root, ids, omega)
        for key in set(root.patches) | set(weak_root.patches):
            path, _, pname = key.rpartition(".")
            layer = root.model.get_submodule(path)
            want = merged(root, key) - merged(weak_root, key)
            got = sum((dense(layer, d) for d in deltas.get(layer, []) if pname == "weight"), torch.zeros_like(want)) \
                * (1.0 - omega) if pname == "weight" else want  # biases: not patched by these LoRAs
            worst = max(worst, float((got - want).abs().max()))
            layers += pname == "weight"
    moved = sum(1 for p in (after.unet, clip_patcher(after.clip)) for _ in p.patches)
    check(name, worst < 1e-5 and layers > 0,
          f"θ'−θ_ω vs {HOST}'s loader at ω×strength: max err {worst:.2e} over {layers} weights ({moved} patched keys)")


with tempfile.TemporaryDirectory() as tmp:
    full, uonly, tonly = {}, {"unet_only": True}, {"te_only": True}
    case("unet_only_next_to_full", tmp, {"subject": (1.0, uonly), "style": (0.8, full)}, {"subject"}, 0.0)
    case("te_only_next_to_full", tmp, {"subject": (1.0, tonly), "style": (0.8, full)}, {"subject"}, 0.3)
    case("full_next_to_unet_only", tmp, {"subject": (1.0, full), "style": (0.8, uonly)}, {"subject"}, 0.5)
    case("partly_matching_unet", tmp, {"subject": (1.0, full), "odd": (0.7, {"junk_unet": 20})}, {"subject"}, 0.3)
    case("mostly_unmatched", tmp, {"subject": (1.0, full), "odd": (0.7, {"unet_only": True, "junk": 400})},
         {"subject"}, 0.3)
    case("strength_zero_first", tmp, {"zero": (0.0, full), "subject": (1.0, full)}, {"subject"}, 0.5)
    case("two_on_the_same_layers", tmp, {"subject": (1.0, full), "style": (0.8, full)}, {"style"}, 0.2)
    case("all_selected", tmp, {"subject": (1.0, uonly), "style": (0.8, tonly)}, {"subject", "style"}, 0.0)

print(f"{'FAIL' if failures else 'PASS'}: {failures} failure(s)")
sys.exit(1 if failures else 0)
