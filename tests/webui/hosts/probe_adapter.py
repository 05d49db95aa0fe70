"""PG's fork adapters against the fork's OWN code (no server, no checkpoint): run in the harness venv
from the fork's webui/ (tests/webui/hosts/probe_adapter.sh reforge|forge|forge_neo).

A tiny real UNet (tests/unit/tiny_unet.py; in Forge with Forge's own Linear class) stands behind a
model object that has what the fork's batched CFG function asks for and calls the UNet as the fork
does (reForge `model_base.py:191`, Forge `backend/modules/k_model.py:45`, Neo `:57`). LoRAs are loaded
by the fork's `load_lora` from kohya-style tensors and put on the fork's patcher clone chain with
`add_patches`, merged as loading the model does (reForge and Neo `patch_weight_to_device`, Forge
`LoraLoader.refresh`). PG's adapter then gives θ_ω's differences (through the fork's merge function)
and the weak rows (from the fork's `cond_or_uncond` marks). Reference: a second chain with the
selected LoRA at ω × strength, merged by the fork, the uncond entry run alone.

  one_call   PG's output rows equal the reference (cond rows: θ'; uncond rows: θ_ω), one UNet call
  split      the same when low memory splits the entries into one call each
  types      a LoHa and a DoRA on the same keys as the subject (dense path through the fork's merge)
  clean      no hook left on any module; the chain's entries untouched

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
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path[:0] = [PG_ROOT, os.path.join(PG_ROOT, "tests", "unit")]
from pg_ext.branch import WeakBranch  # noqa: E402
from pg_ext.router import MarkedRowRouter  # noqa: E402
from pg_hosts import forge, forge_neo, reforge  # noqa: E402
from tiny_unet import TinyUNet  # noqa: E402

if HOST == "forge":
    from backend.operations import ForgeOperations
    from backend.patcher import lora as host_lora
    from backend.patcher.base import ModelPatcher as RootPatcher
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import ConditionCrossAttn as CrossAttn
    adapter = forge
elif HOST == "forge_neo":
    from backend.operations import ForgeOperations
    from backend.patcher import lora as host_lora
    from backend.patcher.base import ModelPatcher as RootPatcher
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import ConditionCrossAttn as CrossAttn
    adapter = forge_neo
else:
    from ldm_patched.modules import lora as host_lora
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
    """What calc_cond_batch needs of the model; the UNet is called as model_base.py:191 calls it."""

    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        self.memory = 0.0

    def memory_required(self, input_shape, **kwargs):
        return self.memory  # inf: the fork's free-memory check takes one entry per call

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        # reForge model_base.py:191, Forge backend/modules/k_model.py:45, Neo :57
        return self.diffusion_model(x, t, context=c_crossattn, control=control, transformer_options=transformer_options)


def kohya(model, seed, kind, only=lambda name: True):
    """(state dict, key map) of a LoRA of `kind` on the UNet's Linear/Conv2d layers, kohya names."""
    gen = torch.Generator().manual_seed(seed)
    sd, to_load = {}, {}
    for name, layer in model.diffusion_model.named_modules():
        linear = isinstance(layer, nn.Linear) or (HOST == "forge" and isinstance(layer, ForgeOperations.Linear))
        if not (linear or isinstance(layer, nn.Conv2d)) or not only(name):
            continue
        prefix = "lora_unet_" + name.replace(".", "_")
        to_load[prefix] = f"diffusion_model.{name}.weight"
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
    loaded = host_lora.load_lora(sd, to_load)
    return loaded[0] if isinstance(loaded, tuple) else loaded  # Forge's loader also returns the unmatched keys


def chain(root, loras):
    """One clone per LoRA, its entries added at its strength (each fork's networks.py does this)."""
    patcher = root
    for filename, patches, strength in loras:
        patcher = patcher.clone()
        patcher.add_patches(filename=filename, patches=patches, strength_patch=strength) if HOST != "reforge" \
            else patcher.add_patches(patches, strength)
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


def selected_of(after, root, nets):
    """The subject's entries: Forge keys them by file; here the chain is built with one link per LoRA, so the
    subject's are the ones its link added (which LoRA adds which links in a real load: probe_loader.py)."""
    if HOST == "forge":
        return forge.selected_entries(after, nets[:1])
    links = []
    patcher = after
    while patcher is not root:
        links.append(patcher)
        patcher = patcher.parent
    first = links[-1]
    return {id(e) for key, entries in first.patches.items() for e in entries[len(root.patches.get(key, [])):]}


def case(name, style_kind, omega, split):
    unet = TinyUNet(16, 12).requires_grad_(False)
    model = Model(forge_linears(unet) if HOST != "reforge" else unet)
    root = RootPatcher(model, torch.device("cpu"), torch.device("cpu"))
    subject = ("/loras/subject.safetensors", kohya(model, 1, "lora"))
    style = ("/loras/style.safetensors", kohya(model, 2, style_kind, only=lambda n: "attn" in n))
    after = chain(root, [(*subject, 1.0), (*style, 0.8)])
    entries_of = (lambda p: {k: list(v) for k, v in p.patches.items()}) if COMFY_PATCHER \
        else (lambda p: {k: [list(e) for e in v] for k, v in p.lora_patches.items()})
    snapshot = entries_of(after)
    nets = [type("Net", (), {"name": n, "network_on_disk": type("Disk", (), {"filename": f})()})()
            for n, f in (("subject", subject[0]), ("style", style[0]))]
    selected = selected_of(after, root, nets)
    pass_patcher = after.clone()
    deltas = adapter.patcher_deltas(pass_patcher, selected, omega)
    model.memory = float("inf") if split else 0.0
    calls = []
    recorder = model.diffusion_model.register_forward_pre_hook(
        lambda m, a, k: calls.append(k["transformer_options"]["cond_or_uncond"]), with_kwargs=True)
    router = MarkedRowRouter(model.diffusion_model, WeakBranch(omega, deltas), reforge.rows_of_call)
    merged(pass_patcher)
    try:
        with router, torch.no_grad():
            router.begin_step(ctx_c, ctx_u)
            cond_pg, uncond_pg = batched(model, entries(ctx_c), entries(ctx_u))
    finally:
        restore(pass_patcher)
        recorder.remove()
    weak = chain(root, [(*subject, omega), (*style, 0.8)])
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
    check(name, err_u < 1e-4 and err_c < 1e-5 and moved > 1e-3 and linears > 0,
          f"ω={omega} calls {calls}, max |uncond PG − ref| = {err_u:.1e}, |cond PG − ref| = {err_c:.1e}, "
          f"uncond at θ_ω vs θ' differs by {moved:.3f}, deltas {kinds} on {len(deltas)} layers ({linears} Linear)")
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    same = entries_of(after) == snapshot
    check(f"{name}.clean", hooks == 0 and same, f"hooks left {hooks}, chain entries unchanged {same}")


case("one_call", "lora", 0.0, split=False)
case("one_call.omega_half", "lora", 0.5, split=False)
case("split", "lora", 0.3, split=True)
case("types.loha", "loha", 0.3, split=False)
case("types.dora", "dora", 0.3, split=False)
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
