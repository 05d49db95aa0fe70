"""PG's DiT layer corrections against Forge Neo's OWN code (no server, no checkpoint), issue 18 item 2:
run in the Neo harness venv from its webui/ (tests/webui/hosts/probe_dit_layers.sh).

Neo's real diffusion transformers, built small with Neo's layer classes (`using_forge_operations`:
Linear, Conv3d, RMSNorm are Neo's), random weights: Flux (`backend/nn/flux.py`, the `"flux"` key map with
its offset entries on the fused qkv / linear1 and `swap_scale_shift` on the final adaLN, whose 1152 rows
Neo's LoRA adapter swaps per 1024-row chunk) and Wan (`backend/nn/wan.py`: Conv3d patch embedding, RMSNorm
q/k norms, LayerNorm, the blocks' raw `modulation` parameter). LoRA files in the formats people share (diffusers/ai-toolkit `transformer.` +
`lora_A/lora_B`, kohya `lora_unet_`, generic `diffusion_model.` + `.diff`) are loaded by Neo's loader
(`forge_neo.load_one`: networks.load_lora_for_models), a subject LoRA next to an unselected style LoRA on
the same fused weights. The host patches the model (`ModelPatcher.patch_model`); PG's deltas
(`forge_neo.patcher_deltas`) hook it, and one forward of 2 rows [cond, uncond] must give θ' on row 0 and
θ_ω on row 1, where θ' and θ_ω are the weights Neo's own `patch_model` loads for the chain and for the
loader run again with the subject at ω × strength. LoRA keys on Wan's raw `modulation` parameters are loaded
into the patches but never merged by Neo (`_load_list`): PG must leave them alone too. On the
text side, an encoder of Neo's Embedding, `add` RMSNorm and Linear, patched by generic `text_encoders.` keys,
must give θ_ω in PG's weak encode (every row weak).

Prints PASS/FAIL per case; exit 1 on any FAIL.
"""
import copy
import os
import sys
import tempfile
import types

PG_ROOT = os.environ["PG_EXT_DIR"]
sys.argv = [sys.argv[0], "--cpu", "--skip-torch-cuda-test"]
sys.path.insert(0, os.getcwd())

from modules_forge.initialization import initialize_forge  # noqa: E402

initialize_forge()
from modules import shared_init  # noqa: E402

shared_init.initialize()
from modules import processing  # noqa: E402,F401  (first: the samplers and sd_models import each other through it)
sys.path.insert(0, os.path.join(os.getcwd(), "extensions-builtin", "sd_forge_lora"))
import networks  # noqa: E402,F401  (Neo's Lora extension module, used by forge_neo.load_one)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from backend.nn.flux import IntegratedFluxTransformer2DModel  # noqa: E402
from backend.nn.wan import WanModel  # noqa: E402
from backend.operations import ForgeOperations, using_forge_operations  # noqa: E402
from backend.patcher.base import ModelPatcher  # noqa: E402
from backend.patcher.clip import CLIP  # noqa: E402
from backend.patcher.lora import merge_lora_to_weight  # noqa: E402

sys.path[:0] = [PG_ROOT, os.path.join(PG_ROOT, "tests", "unit"), os.path.join(PG_ROOT, "tests", "host", "double")]
from pg_ext.branch import WeakBranch  # noqa: E402
from pg_hosts import comfy, forge_neo  # noqa: E402
from tiny_sd import TextLayers  # noqa: E402

failures = 0
H = 576  # Flux hidden size: the final adaLN has 2H = 1152 rows, more than Neo's 1024-row merge chunk


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


class Model(nn.Module):
    """The patcher's model as Neo's key maps read it: `diffusion_model` with its `config`, the repo name."""

    def __init__(self, unet, repo, config):
        super().__init__()
        self.diffusion_model = unet
        unet.config = config
        self.config = types.SimpleNamespace(huggingface_repo=repo)


class Objects:
    def __init__(self, unet, clip):
        self.unet, self.clip = unet, clip


def randomized(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if name.endswith(("norm.weight", "norm_q.weight", "norm_k.weight", "norm3.weight")) \
                or "query_norm" in name or "key_norm" in name else 0.05
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if scale == 1.0 else 0.0))
    return module.requires_grad_(False)


def flux():
    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        unet = IntegratedFluxTransformer2DModel(
            in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=16, hidden_size=H, mlp_ratio=4.0, num_heads=4,
            depth=1, depth_single_blocks=1, axes_dim=[16, 64, 64], theta=10000, patch_size=2, qkv_bias=True,
            guidance_embed=True)
    unet = randomized(unet, 0)
    assert isinstance(unet.single_blocks[0].linear1, ForgeOperations.Linear)
    assert isinstance(unet.double_blocks[0].img_attn.norm.query_norm, ForgeOperations.RMSNorm)
    return Model(unet, "black-forest-labs/FLUX.1-dev", {"depth": 1, "depth_single_blocks": 1, "hidden_size": H})


def wan():
    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        unet = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=4, dim=64, ffn_dim=128,
                        freq_dim=32, text_dim=16, out_dim=4, num_heads=2, num_layers=1)
    unet = randomized(unet, 1)
    assert isinstance(unet.patch_embedding, ForgeOperations.Conv3d)
    assert isinstance(unet.blocks[0].self_attn.norm_q, ForgeOperations.RMSNorm)
    return Model(unet, "Wan-AI/Wan2.1-T2V-1.3B", {})


def lora_pair(sd, prefix, out, inp, gen, up_name="lora_B", down_name="lora_A", kernel=(), rank=4, alpha=True):
    sd[f"{prefix}.{down_name}.weight"] = torch.randn(rank, inp, *kernel, generator=gen) * 0.3
    sd[f"{prefix}.{up_name}.weight"] = torch.randn(out, rank, *(1,) * len(kernel), generator=gen) * 0.3
    if alpha:
        sd[f"{prefix}.alpha"] = torch.tensor(float(rank) / 2)


def flux_subject(gen):
    """diffusers / ai-toolkit keys: q/k/v and proj_mlp become offset entries, norm_out.linear a swap entry;
    generic `.diff` keys on the RMSNorm weights (the diffusers norm names never load in Neo)."""
    sd = {}
    for part in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj"):  # txt v left out: a partial fused weight
        lora_pair(sd, f"transformer.transformer_blocks.0.attn.{part}", H, H, gen)
    lora_pair(sd, "transformer.transformer_blocks.0.ff.net.0.proj", 4 * H, H, gen)
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        lora_pair(sd, f"transformer.single_transformer_blocks.0.{part}", 4 * H if part == "proj_mlp" else H, H, gen)
    lora_pair(sd, "transformer.single_transformer_blocks.0.proj_out", H, 5 * H, gen)
    lora_pair(sd, "transformer.norm_out.linear", 2 * H, H, gen)
    sd["diffusion_model.double_blocks.0.img_attn.norm.query_norm.diff"] = torch.randn(144, generator=gen) * 0.2
    sd["diffusion_model.single_blocks.0.norm.key_norm.diff"] = torch.randn(144, generator=gen) * 0.2
    return sd


def flux_style(gen):
    """kohya keys on the whole fused weights the subject patches in slices."""
    sd = {}
    lora_pair(sd, "lora_unet_double_blocks_0_img_attn_qkv", 3 * H, H, gen, "lora_up", "lora_down")
    lora_pair(sd, "lora_unet_single_blocks_0_linear1", 7 * H, H, gen, "lora_up", "lora_down")
    lora_pair(sd, "lora_unet_final_layer_adaLN_modulation_1", 2 * H, H, gen, "lora_up", "lora_down")
    return sd


def wan_subject(gen, modulation=False, head=False):
    """generic ComfyUI keys: LoCon on the Conv3d patch embedding, Linears, `.diff` on RMSNorm and LayerNorm."""
    sd = {}
    lora_pair(sd, "diffusion_model.patch_embedding", 64, 4, gen, "lora_up", "lora_down", kernel=(1, 2, 2))
    for name in ("self_attn.q", "self_attn.k", "cross_attn.v", "ffn.0"):
        out = 128 if name == "ffn.0" else 64
        lora_pair(sd, f"diffusion_model.blocks.0.{name}", out, 64, gen, "lora_up", "lora_down")
    sd["diffusion_model.blocks.0.self_attn.norm_q.diff"] = torch.randn(64, generator=gen) * 0.2
    sd["diffusion_model.blocks.0.norm3.diff"] = torch.randn(64, generator=gen) * 0.2
    sd["diffusion_model.blocks.0.norm3.diff_b"] = torch.randn(64, generator=gen) * 0.2
    if modulation:
        sd["diffusion_model.blocks.0.modulation.diff"] = torch.randn(1, 6, 64, generator=gen) * 0.2
    if head:
        sd["diffusion_model.head.modulation.diff"] = torch.randn(1, 2, 64, generator=gen) * 0.2
    return sd


def wan_full_diff(gen):
    """As a LoRA extracted from a full fine-tune: Linears, a full `.diff` and `.diff_b` on the Conv3d patch
    embedding, `.diff` on the blocks' raw `modulation` (which Neo never merges)."""
    sd = {}
    for name in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"):
        lora_pair(sd, f"diffusion_model.blocks.0.{name}", 64, 64, gen)
    sd["diffusion_model.patch_embedding.diff"] = torch.randn(64, 4, 1, 2, 2, generator=gen) * 0.3 / 4 ** 0.5
    sd["diffusion_model.patch_embedding.diff_b"] = torch.randn(64, generator=gen) * 0.01
    sd["diffusion_model.blocks.0.modulation.diff"] = torch.randn(1, 6, 64, generator=gen) * 0.01
    return sd


def wan_style(gen):
    sd = {}
    lora_pair(sd, "lora_unet_blocks_0_self_attn_q", 64, 64, gen, "lora_up", "lora_down")
    sd["diffusion_model.patch_embedding.diff"] = torch.randn(64, 4, 1, 2, 2, generator=gen) * 0.1
    return sd


def write(directory, name, sd):
    path = os.path.join(directory, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def load(original, targets):
    unet, clip = original.unet, original.clip
    for target in targets:
        unet, clip = forge_neo.load_one(unet, clip, tuple(target))
    return Objects(unet, clip)


def merged_copy(root, patches):
    """A copy of `root` (unpatched) with every key of `patches` merged by Neo's function."""
    out = copy.deepcopy(root)
    with torch.no_grad():
        for key, entries in patches.items():
            path, _, name = key.rpartition(".")
            param = getattr(out.get_submodule(path), name)
            param.copy_(merge_lora_to_weight(entries, param.detach().float().clone(), key, computation_dtype=torch.float32))
    return out


def hosts_weights(patcher):
    """A copy of the model with the weights Neo's own `patch_model` loads for this patcher's entries."""
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        return copy.deepcopy(patcher.model)
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def kinds(deltas, root):
    names = {id(m): n for n, m in root.named_modules()}
    return {names[id(layer)].replace("diffusion_model.", ""): type(d[0]).__name__ for layer, d in deltas.items()}


def case(name, directory, make, subject, style, inputs, expect, omega):
    torch.manual_seed(0)
    model = make()
    text = TextLayers().requires_grad_(False)
    original = Objects(ModelPatcher(model, torch.device("cpu"), torch.device("cpu")), CLIP({"clip_l": text}))
    files = [write(directory, f"{name}_subject", subject), write(directory, f"{name}_style", style)]
    targets = [[files[0], 1.0, 1.0, False], [files[1], 0.8, 0.8, False]]
    sd_model = types.SimpleNamespace(forge_objects_original=original, current_lora_hash=str(targets))
    after = load(original, targets)
    sd_model.forge_objects = after
    weak = load(original, [[files[0], omega, omega, False], targets[1]])
    offsets = sum(1 for entries in after.unet.patches.values() for e in entries if e[3] is not None)
    functions = sum(1 for entries in after.unet.patches.values() for e in entries if e[4] is not None)
    root = model
    tuned_ref, weak_ref = hosts_weights(after.unet), hosts_weights(weak.unet)
    merged_all = merged_copy(root, after.unet.patches)  # every patched key merged, as if the host merged all
    left = sorted(k.replace("diffusion_model.", "") for k, p in merged_all.named_parameters()
                  if k in after.unet.patches and not torch.equal(p, dict(tuned_ref.named_parameters())[k]))
    after.unet.patch_model(device_to=torch.device("cpu"))  # the host merges θ' into the live model
    try:
        owners = comfy.lora_owners(sd_model, forge_neo.load_one)
        chosen = comfy.chosen_targets(comfy.lora_targets(sd_model), [types.SimpleNamespace(
            network_on_disk=types.SimpleNamespace(filename=files[0]))])
        ids = comfy.selected_entries(after.unet, original.unet, owners.unet, chosen)
        try:
            deltas = forge_neo.patcher_deltas(after.unet, ids, omega)
        except NotImplementedError as error:  # PG off for the pass: a layer type it cannot correct
            check(f"{name} ω={omega}", False, f"PG refused: {error}")
            return
        got_kinds = kinds(deltas, root)
        wrong = {k: (got_kinds.get(k), v) for k, v in expect.items() if got_kinds.get(k) != v}
        with torch.no_grad():
            args = inputs()
            want_cond = tuned_ref.diffusion_model(*[a[:1] for a in args])
            want_weak = weak_ref.diffusion_model(*[a[1:] for a in args])
            plain = root.diffusion_model(*args)
            with WeakBranch(omega, deltas) as branch:
                branch.mask = torch.tensor([False, True])
                out = root.diffusion_model(*args)
        err_cond = float((out[:1] - want_cond).abs().max())
        err_weak = float((out[1:] - want_weak).abs().max())
        moved = float((plain[1:] - want_weak).abs().max())
    finally:
        after.unet.unpatch_model(device_to=torch.device("cpu"))
    check(f"{name} ω={omega}", not wrong and err_cond < 1e-4 and err_weak < 1e-4 and moved > 1e-3,
          f"{offsets} offset + {functions} function entries; patched keys Neo leaves unmerged: {left or 'none'}; delta kinds "
          f"{'as expected' if not wrong else wrong}; weak row vs θ_ω model {err_weak:.1e}, cond row vs θ' {err_cond:.1e} "
          f"(θ' vs θ_ω on that row: {moved:.1e})")


def text_encoder_case(directory, omega):
    """The text side (P1c, P2c): an LLM-like encoder of Neo's classes, an Embedding (Anima's LLM adapter
    `nn/anima.py:637,655`), an RMSNorm with `add` (Gemma's, `nn/llm/llama.py:363-366`) and a Linear, patched by
    a LoRA's generic `text_encoders.` keys (`comfy/lora.py:115-117`) through Neo's loader: PG's weak encode
    (every row weak) must equal the encoder with the subject at ω × strength."""
    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        text = nn.Module()
        text.embed = nn.Embedding(50, 16)
        text.norm = nn.RMSNorm(16, eps=1e-6, add=True)
        text.fc = nn.Linear(16, 16)
    text = randomized(text, 3)
    assert isinstance(text.embed, ForgeOperations.Embedding) and text.norm.add

    def encode(module, ids):
        return module.fc(module.norm(module.embed(ids)))

    gen = torch.Generator().manual_seed(10)
    sd = {}
    lora_pair(sd, "text_encoders.llm.embed", 50, 16, gen, "lora_up", "lora_down")  # up [num, r] @ down [r, dim]
    lora_pair(sd, "text_encoders.llm.fc", 16, 16, gen, "lora_up", "lora_down")
    sd["text_encoders.llm.norm.diff"] = torch.randn(16, generator=gen) * 0.2
    unet_model = Model(nn.Module(), "pg/none", {})
    original = Objects(ModelPatcher(unet_model, torch.device("cpu"), torch.device("cpu")), CLIP({"llm": text}))
    path = write(directory, "text_subject", sd)
    after = load(original, [[path, 1.0, 1.0, False]])
    weak = load(original, [[path, omega, omega, False]])
    root = after.clip.patcher.model
    tuned_ref, weak_ref = merged_copy(root, after.clip.patcher.patches), merged_copy(root, weak.clip.patcher.patches)
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    after.clip.patcher.patch_model(device_to=torch.device("cpu"))
    try:
        chosen = {id(e) for entries in after.clip.patcher.patches.values() for e in entries}
        try:
            deltas = forge_neo.patcher_deltas(after.clip.patcher, chosen, omega, every_row_weak=True)
        except (NotImplementedError, TypeError) as error:
            check(f"text_encoder ω={omega}", False, f"PG refused: {error}")
            return
        got_kinds = kinds(deltas, root)
        with torch.no_grad(), WeakBranch(omega, deltas) as branch:
            branch.mask = "all"
            out = encode(root.llm, ids)
        want = encode(weak_ref.llm, ids)
        moved = float((encode(tuned_ref.llm, ids) - want).abs().max())
        err = float((out - want).abs().max())
    finally:
        after.clip.patcher.unpatch_model(device_to=torch.device("cpu"))
    check(f"text_encoder ω={omega}", err < 1e-5 and moved > 1e-3, f"delta kinds {got_kinds}; weak encode vs θ_ω "
          f"encoder {err:.1e} (θ' vs θ_ω: {moved:.1e})")


def swap_order():
    """How Neo's merge moves the rows of a swap_scale_shift entry on the 2H-row final adaLN (information)."""
    from pg_hosts.patches import _row_permutation

    layer = nn.Linear(H, 2 * H)
    adapter = next(v for v in forge_neo_lora_adapters() if v.name == "lora")
    gen = torch.Generator().manual_seed(8)
    patch = adapter([], (torch.randn(2 * H, 2, generator=gen), torch.randn(2, H, generator=gen), None, None, None, None))
    entry = (1.0, patch, 1.0, None, forge_neo.row_permutations()[0], False)
    perm = _row_permutation("final_layer.adaLN_modulation.1.weight", entry, layer, (0, 2 * H),
                            lambda e, w, k: merge_lora_to_weight(e, w, k, computation_dtype=torch.float32))
    whole = torch.cat([torch.arange(H, 2 * H), torch.arange(H)])
    chunked = torch.cat([torch.cat([torch.arange(512, 1024), torch.arange(512)]),
                         torch.cat([torch.arange(1088, 1152), torch.arange(1024, 1088)])])
    order = "halves swapped per 1024-row chunk" if torch.equal(perm, chunked) else \
        "halves of the whole weight swapped" if torch.equal(perm, whole) else f"other: {perm.tolist()[:8]}..."
    print(f"INFO Neo's merge of a swap_scale_shift LoRA entry on {2 * H} rows: {order}", flush=True)


def forge_neo_lora_adapters():
    from modules_forge.packages.comfy import weight_adapter

    return weight_adapter.adapters


def flux_inputs():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    return (x, torch.tensor([0.7, 0.7]), torch.randn(2, 5, 16, generator=gen), torch.randn(2, 8, generator=gen),
            torch.tensor([3.5, 3.5]))


def wan_inputs():
    gen = torch.Generator().manual_seed(6)
    return (torch.randn(2, 4, 1, 8, 8, generator=gen), torch.tensor([500.0, 500.0]), torch.randn(2, 8, 16, generator=gen))


FLUX_EXPECT = {"double_blocks.0.img_attn.qkv": "SlicedLowRankDelta", "double_blocks.0.txt_attn.qkv": "SlicedLowRankDelta",
               "single_blocks.0.linear1": "SlicedLowRankDelta", "single_blocks.0.linear2": "LowRankDelta",
               "double_blocks.0.img_mlp.0": "LowRankDelta", "final_layer.adaLN_modulation.1": "LowRankDelta",
               "double_blocks.0.img_attn.norm.query_norm": "DenseDelta", "single_blocks.0.norm.key_norm": "DenseDelta"}
WAN_EXPECT = {"patch_embedding": "DenseDelta", "blocks.0.self_attn.q": "LowRankDelta", "blocks.0.self_attn.k": "LowRankDelta",
              "blocks.0.self_attn.norm_q": "DenseDelta", "blocks.0.norm3": "DenseDelta", "blocks.0.ffn.0": "LowRankDelta"}
WAN_ALONE = dict(WAN_EXPECT, patch_embedding="LowRankDelta")  # the subject's LoCon alone on it: low rank

with tempfile.TemporaryDirectory() as tmp:
    for omega in (0.0, 0.5):
        case("flux_diffusers_next_to_kohya", tmp, flux, flux_subject(torch.Generator().manual_seed(1)),
             flux_style(torch.Generator().manual_seed(2)), flux_inputs, FLUX_EXPECT, omega)
        case("wan_generic", tmp, wan, wan_subject(torch.Generator().manual_seed(3), modulation=True, head=True),
             wan_style(torch.Generator().manual_seed(4)), wan_inputs, dict(WAN_EXPECT, **{"blocks.0": None, "head": None}),
             omega)
    case("wan_locon_alone", tmp, wan, wan_subject(torch.Generator().manual_seed(3)),
         {"lora_unet_blocks_0_ffn_2.lora_up.weight": torch.zeros(64, 2),
          "lora_unet_blocks_0_ffn_2.lora_down.weight": torch.zeros(2, 128)}, wan_inputs, WAN_ALONE, 0.3)
    case("wan_full_diff", tmp, wan, wan_full_diff(torch.Generator().manual_seed(7)), wan_style(torch.Generator().manual_seed(4)),
         wan_inputs, {"patch_embedding": "DenseDelta", "blocks.0.self_attn.q": "LowRankDelta"}, 0.3)
    text_encoder_case(tmp, 0.3)
    swap_order()

print(f"{'FAIL' if failures else 'PASS'}: {failures} failure(s)")
sys.exit(1 if failures else 0)
