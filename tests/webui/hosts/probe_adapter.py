"""PG's fork adapters against the fork's OWN code (no server, no checkpoint): run in the harness venv
from the fork's webui/ (tests/webui/hosts/probe_adapter.sh reforge|forge|forge_neo).

A tiny real UNet (tests/unit/tiny_unet.py; in Forge with Forge's own Linear class) stands behind a
model object that has what the fork's batched CFG function asks for and calls the UNet as the fork
does (reForge `model_base.py:191`, Forge `backend/modules/k_model.py:45`, Neo `:57`). LoRAs are real
safetensors files (kohya keys) put on the patcher chain by the fork's own Lora extension, one
`networks.load_lora_for_models` per LoRA from the original patcher as its `load_networks` does (reForge
`extensions-builtin/Lora/networks.py:98-104`, Forge and Neo `sd_forge_lora/networks.py`), and merged as
loading the model does (reForge and Neo `patch_weight_to_device`, Forge `LoraLoader.refresh`). PG's
adapter then tells the subject's entries apart as it does in a pass (reForge/Neo: replaying that loader,
`comfy.lora_owners`; Forge: by file) and gives θ_ω's differences (through the fork's merge function)
and the weak rows (from the fork's `cond_or_uncond` marks). Reference: a second chain with the
selected LoRA at ω × strength, loaded and merged by the fork, the uncond entry run alone.

  one_call   PG's output rows equal the reference (cond rows: θ'; uncond rows: θ_ω), one UNet call
  split      the same when low memory splits the entries into one call each
  types      a LoHa and a DoRA on the same keys as the subject (dense path through the fork's merge)
  base       base-checkpoint (DreamBooth) mode under the same LoRAs: the fine-tune read with the adapter's
             `original_param` while the fork has the LoRAs merged (its backup), θ' − θ_base from a base
             file; reference θ_ω = lerp(base, θ', ω) in the parameters under the weak chain, merged by the fork
  clean      no hook left on any module; the chain's entries untouched
  fp8        (reForge, Neo) fp8-stored weights merged offline: θ' − (1 − ω)·D is the fork's own rounded θ_ω

Prints PASS/FAIL lines; exit 1 on any FAIL.
"""
import os
import sys

PG_ROOT = os.environ["PG_EXT_DIR"]
HOST = sys.argv[1]  # reforge | forge | forge_neo
COMFY_PATCHER = HOST != "forge"  # reForge and Neo: ComfyUI's ModelPatcher (flat `patches`, `backup`)
sys.argv = [sys.argv[0], "--cpu" if HOST == "forge_neo" else "--always-cpu", "--skip-torch-cuda-test"]
sys.path.insert(0, os.getcwd())

from modules_forge.initialization import initialize_forge  # noqa: E402

initialize_forge()
from modules import shared_init  # noqa: E402

shared_init.initialize()
from modules import processing, shared  # noqa: E402,F401  (processing first: the samplers and sd_models import each other through it)

sys.path.insert(0, os.path.join(os.getcwd(), "extensions-builtin", "Lora" if HOST == "reforge" else "sd_forge_lora"))
import networks  # noqa: E402  (the fork's own Lora extension module)
import tempfile  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

sys.path[:0] = [PG_ROOT, os.path.join(PG_ROOT, "tests", "unit")]
from pg_ext.branch import WeakBranch  # noqa: E402
from pg_ext.checkpoint import checkpoint_deltas  # noqa: E402
from pg_ext.router import MarkedRowRouter  # noqa: E402
from pg_ext.session import merge_deltas  # noqa: E402
from pg_hosts import comfy, forge, forge_neo, reforge  # noqa: E402
from tiny_unet import TinyUNet  # noqa: E402

if HOST == "forge":
    from backend.operations import ForgeOperations
    from backend.patcher.base import ModelPatcher as RootPatcher
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import ConditionCrossAttn as CrossAttn
    adapter = forge
elif HOST == "forge_neo":
    from backend.operations import ForgeOperations
    from backend.patcher.base import ModelPatcher as RootPatcher
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import ConditionCrossAttn as CrossAttn
    adapter = forge_neo
else:
    from ldm_patched.modules import samplers as sf
    from ldm_patched.modules import utils as host_utils
    from ldm_patched.modules.conds import CONDCrossAttn as CrossAttn
    from modules_forge.unet_patcher import UnetPatcher as RootPatcher
    adapter = reforge

torch.manual_seed(0)
failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


class Model(nn.Module):
    """What calc_cond_batch needs of the model; the UNet is called as model_base.py:191 calls it. The fork's
    LoRA key maps also read its config: reForge `model_config.unet_config` (lora.py:188), Forge
    `diffusion_model.config` (comfyui_lora_collection/lora.py:299), Neo that and `config.huggingface_repo`;
    empty for this tiny UNet (no diffusers names: kohya keys only)."""

    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        self.memory = 0.0
        unet.config = {}
        self.model_config = types.SimpleNamespace(unet_config={})
        self.config = types.SimpleNamespace(huggingface_repo="pg/tiny-unet")

    def memory_required(self, input_shape, **kwargs):
        return self.memory  # inf: the fork's free-memory check takes one entry per call

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        # reForge model_base.py:191, Forge backend/modules/k_model.py:45, Neo :57
        return self.diffusion_model(x, t, context=c_crossattn, control=control, transformer_options=transformer_options)


def lora_file(directory, name, model, seed, kind, only=lambda name: True):
    """A LoRA file of `kind` on the UNet's Linear/Conv2d layers (kohya keys), written where the fork reads it."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for layer_name, layer in model.diffusion_model.named_modules():
        linear = isinstance(layer, nn.Linear) or (HOST == "forge" and isinstance(layer, ForgeOperations.Linear))
        if not (linear or isinstance(layer, nn.Conv2d)) or not only(layer_name):
            continue
        prefix = "lora_unet_" + layer_name.replace(".", "_")
        out_f, in_f = layer.weight.shape[0], layer.weight[0].numel()
        r = 2
        rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.2  # noqa: E731
        if kind == "loha":
            sd.update({f"{prefix}.hada_w1_a": rnd(out_f, r), f"{prefix}.hada_w1_b": rnd(r, in_f),
                       f"{prefix}.hada_w2_a": rnd(out_f, r), f"{prefix}.hada_w2_b": rnd(r, in_f)})
        else:
            conv = isinstance(layer, nn.Conv2d)
            sd[f"{prefix}.lora_up.weight"] = rnd(out_f, r, 1, 1) if conv else rnd(out_f, r)
            sd[f"{prefix}.lora_down.weight"] = rnd(r, layer.weight.shape[1], *layer.kernel_size) if conv else rnd(r, in_f)
            if kind == "dora":
                norms = layer.weight.flatten(1).norm(dim=1)  # one per output channel, shaped like the weight
                sd[f"{prefix}.dora_scale"] = norms.reshape(-1, *[1] * (layer.weight.dim() - 1)) * 1.1
        sd[f"{prefix}.alpha"] = torch.tensor(1.0)
    path = os.path.join(directory, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def load_one(unet, target):
    """One LoRA through the fork's own Lora extension, from `unet` (no CLIP here: the UNet chain only)."""
    if HOST != "forge":
        return adapter.load_one(unet, None, target)[0]  # the adapter's replay of the host's loader
    filename, strength_model, strength_clip = target[:3]
    return networks.load_lora_for_models(unet, None, networks.load_lora_state_dict(filename), strength_model,
                                         strength_clip, filename=filename, online_mode=False)[0]


def target(filename, strength):
    """A LoRA as the fork's `load_networks` records it in `current_lora_hash` (Neo and Forge add online_mode)."""
    return [filename, strength, strength] if HOST == "reforge" else [filename, strength, strength, False]


def chain(root, loras):
    """`load_networks`: from the original patcher, each LoRA of the prompt through the host's loader, in order."""
    patcher = root
    for filename, strength in loras:
        patcher = load_one(patcher, target(filename, strength))
    return patcher


def merged(patcher):
    """What loading the patcher does: the fork merges its entries (the original kept in a backup)."""
    if HOST == "forge":
        patcher.lora_loader.refresh(patcher.lora_patches, offload_device=torch.device("cpu"), force_refresh=True)
    else:
        for key in patcher.patches:
            patcher.patch_weight_to_device(key, device_to=torch.device("cpu"))


def restore(patcher):
    if HOST == "forge":
        patcher.lora_loader.refresh({}, offload_device=torch.device("cpu"), force_refresh=True)
    elif HOST == "forge_neo":
        patcher.unpatch_model()
    else:
        for key, saved in list(patcher.backup.items()):
            host_utils.set_attr_param(patcher.model, key, saved.weight)
        patcher.backup.clear()


def batched(model, cond, uncond):
    if HOST != "reforge":
        return sf.calc_cond_uncond_batch(model, cond or [], uncond, x, sigma, {})
    return sf.calc_cond_batch(model, [cond, uncond], x, sigma, {})


def forge_linears(module):
    """Forge and Neo build their layers from ForgeOperations: the same weights in their Linear (Forge: an
    nn.Module that takes whatever the state dict holds; Neo: an nn.Linear subclass, bias as asked)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            extra = {"bias": child.bias is not None} if HOST == "forge_neo" else {}
            layer = ForgeOperations.Linear(child.in_features, child.out_features, **extra)
            layer.load_state_dict(child.state_dict())
            setattr(module, name, layer.requires_grad_(False))
        else:
            forge_linears(child)
    return module


B = 2
x = torch.randn(B, 4, 8, 8)
sigma = torch.full((B,), 400.0)
ctx_c, ctx_u = torch.randn(B, 7, 12), torch.randn(B, 7, 12)


def entries(ctx):
    return [{"model_conds": {"c_crossattn": CrossAttn(ctx)}}]


class Objects:
    def __init__(self, unet, clip=None):
        self.unet, self.clip = unet, clip

    def shallow_copy(self):
        return Objects(self.unet, self.clip)


def selected_of(after, root, loras, nets):
    """The subject's entries, told apart as the adapter does in a pass: Forge by file; reForge and Neo by
    replaying the fork's loader over the LoRAs its record names (`comfy.lora_owners`)."""
    if HOST == "forge":
        return forge.selected_entries(after, nets[:1])
    sd_model = types.SimpleNamespace(forge_objects_original=Objects(root),
                                     current_lora_hash=str([target(f, s) for f, s in loras]))
    owners = comfy.lora_owners(sd_model, adapter.load_one)
    chosen = comfy.chosen_targets(comfy.lora_targets(sd_model), nets[:1])
    return comfy.selected_entries(after, root, owners.unet, chosen)


def base_of(model, seed=9):
    """A base checkpoint of the tiny fine-tune: each weight moved by a rank-1 difference, the rest by noise;
    {parameter name: tensor} as `checkpoint_deltas` reads a file's UNet tensors."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.diffusion_model.named_parameters():
        if p.dim() < 2:
            out[name] = (p.detach() + 0.05 * torch.randn(p.shape, generator=gen)).contiguous()
        else:
            u, v = torch.randn(p.shape[0], 1, generator=gen), torch.randn(1, p[0].numel(), generator=gen)
            out[name] = (p.detach() + 0.05 * (u @ v).reshape(p.shape)).contiguous()
    return out


class Lerped:
    """lerp(base, θ', ω) in the (unmerged) parameters while the reference's weak chain merges on top of it."""

    def __init__(self, unet, base, omega):
        self.unet, self.base, self.omega = unet, base, omega

    def __enter__(self):
        self.saved = {n: p.data.clone() for n, p in self.unet.named_parameters()}
        for n, p in self.unet.named_parameters():
            p.data.copy_(torch.lerp(self.base[n].to(p.dtype), p.data, self.omega))

    def __exit__(self, *exc):
        for n, p in self.unet.named_parameters():
            p.data.copy_(self.saved[n])


def case(name, style_kind, omega, split, base=False):
    unet = TinyUNet(16, 12).requires_grad_(False)
    model = Model(forge_linears(unet) if HOST != "reforge" else unet)
    root = RootPatcher(model, torch.device("cpu"), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        subject = lora_file(tmp, "subject", model, 1, "lora")
        style = lora_file(tmp, "style", model, 2, style_kind, only=lambda n: "attn" in n)
        loras = [(subject, 1.0), (style, 0.8)]
        after = chain(root, loras)
        entries_of = (lambda p: {k: list(v) for k, v in p.patches.items()}) if COMFY_PATCHER \
            else (lambda p: {k: [list(e) for e in v] for k, v in p.lora_patches.items()})
        snapshot = entries_of(after)
        nets = [type("Net", (), {"name": n, "network_on_disk": type("Disk", (), {"filename": f})()})()
                for n, f in (("subject", subject), ("style", style))]
        selected = selected_of(after, root, loras, nets)
        pass_patcher = after.clone()
        deltas = adapter.patcher_deltas(pass_patcher, selected, omega)
        model.memory = float("inf") if split else 0.0
        calls = []
        recorder = model.diffusion_model.register_forward_pre_hook(
            lambda m, a, k: calls.append(k["transformer_options"]["cond_or_uncond"]), with_kwargs=True)
        merged(pass_patcher)
        base_note = ""
        base_weights = base_of(model) if base else None
        try:
            if base:
                # the adapter reads the fine-tune as the script does: original_param on shared.sd_model's patcher
                shared.sd_model = types.SimpleNamespace(forge_objects=Objects(pass_patcher))
                layer = model.diffusion_model.time_embed[0]
                read = adapter.original_param(layer, "weight")
                was_merged = not torch.equal(read, layer.weight)
                base_deltas = checkpoint_deltas(model.diffusion_model, base_weights, original=adapter.original_param)
                deltas = merge_deltas(deltas, base_deltas.deltas)
                base_note = (f"; base: {base_deltas.changed_tensors}/{base_deltas.total_tensors} tensors differ, "
                             f"read unmerged while merged {was_merged}")
            router = MarkedRowRouter(model.diffusion_model, WeakBranch(omega, deltas), reforge.rows_of_call)
            with router, torch.no_grad():
                router.begin_step(ctx_c, ctx_u)
                cond_pg, uncond_pg = batched(model, entries(ctx_c), entries(ctx_u))
        finally:
            restore(pass_patcher)
            recorder.remove()
        weak = chain(root, [(subject, omega), (style, 0.8)])
        with _maybe(base, model, base_weights, omega):
            merged(weak)
            with torch.no_grad():
                uncond_ref = batched(model, None, entries(ctx_u))[1]
            restore(weak)
        merged(after)
        with torch.no_grad():
            cond_ref = batched(model, entries(ctx_c), None)[0]
            uncond_full = batched(model, None, entries(ctx_u))[1]
        restore(after)
    err_u = float((uncond_pg - uncond_ref).abs().max())
    err_c = float((cond_pg - cond_ref).abs().max())
    moved = float((uncond_ref - uncond_full).abs().max())
    kinds = sorted({type(d).__name__ for ds in deltas.values() for d in ds})
    linears = sum(1 for layer in deltas if type(layer).__name__ == "Linear")
    ok_base = not base or (was_merged and base_deltas.changed_tensors == base_deltas.total_tensors)
    check(name, err_u < 1e-4 and err_c < 1e-5 and moved > 1e-3 and linears > 0 and ok_base,
          f"ω={omega} calls {calls}, max |uncond PG − ref| = {err_u:.1e}, |cond PG − ref| = {err_c:.1e}, "
          f"uncond at θ_ω vs θ' differs by {moved:.3f}, deltas {kinds} on {len(deltas)} layers ({linears} Linear)"
          f"{base_note}")
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    same = entries_of(after) == snapshot
    check(f"{name}.clean", hooks == 0 and same, f"hooks left {hooks}, chain entries unchanged {same}")


def _maybe(base, model, base_weights, omega):
    return Lerped(model.diffusion_model, base_weights, omega) if base else _Nothing()


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def fp8_case(name, omega):
    """Weights stored in fp8, LoRAs merged offline: the fork writes θ' back by its own seeded stochastic rounding
    (reForge model_patcher.py:581, Neo base.py:486-487), and the reference's θ_ω likewise. PG's weak weight,
    θ' − (1 − ω)·D with D from the adapter, must be the fork's own θ_ω, rounding included (at the weight: the
    tiny UNet's forward does not run on fp8 weights outside the fork's cast-per-forward layer setup)."""
    unet = TinyUNet(16, 12).requires_grad_(False)
    model = Model(forge_linears(unet) if HOST != "reforge" else unet)
    layers = [m for m in model.diffusion_model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        layer.weight = nn.Parameter(layer.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    root = RootPatcher(model, torch.device("cpu"), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        subject = lora_file(tmp, "subject", model, 1, "lora")
        style = lora_file(tmp, "style", model, 2, "lora", only=lambda n: "attn" in n)
        loras = [(subject, 1.0), (style, 0.8)]
        after = chain(root, loras)
        nets = [type("Net", (), {"name": n, "network_on_disk": type("Disk", (), {"filename": f})()})()
                for n, f in (("subject", subject), ("style", style))]
        pass_patcher = after.clone()
        deltas = adapter.patcher_deltas(pass_patcher, selected_of(after, root, loras, nets), omega)
        merged(pass_patcher)
        patched = {layer: layer.weight.detach().float().clone() for layer in layers}
        restore(pass_patcher)
        weak = chain(root, [(subject, omega), (style, 0.8)])
        merged(weak)
        host_weak = {layer: layer.weight.detach().float().clone() for layer in layers}
        restore(weak)
    corrected = [layer for layer in layers if layer in deltas]

    def difference(delta):  # D as a weight: dense as is, low rank as its product
        if hasattr(delta, "up"):
            return delta.up.float() @ delta.down.float() * delta.scale
        return delta.weight.float()

    err = max((float((patched[m] - (1 - omega) * difference(deltas[m][0]) - host_weak[m]).abs().max())
               for m in corrected), default=float("nan"))
    kinds = sorted({type(deltas[m][0]).__name__ for m in corrected})
    moved = max(float((patched[m] - host_weak[m]).abs().max()) for m in corrected) if corrected else 0.0
    check(name, kinds == ["DenseDelta"] and err < 1e-6 and moved > 1e-3,
          f"ω={omega}: {len(corrected)} fp8 Linear layers, deltas {kinds}, max |θ' − (1−ω)·D − host θ_ω| = {err:.1e} "
          f"(θ' vs θ_ω differ by {moved:.3f})")


case("one_call", "lora", 0.0, split=False)
case("one_call.omega_half", "lora", 0.5, split=False)
case("split", "lora", 0.3, split=True)
case("types.loha", "loha", 0.3, split=False)
case("types.dora", "dora", 0.3, split=False)
case("base.lora_loha", "loha", 0.3, split=False, base=True)
case("base.omega_zero.split", "lora", 0.0, split=True, base=True)
if COMFY_PATCHER:  # Forge merges fp8-stored weights online, per forward and unrounded (docs/forks.md §1)
    fp8_case("fp8.offline", 0.3)
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
