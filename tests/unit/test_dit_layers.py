"""The layer types that DiT LoRAs patch in Forge Neo (issue 18 item 2; docs/dit-families.md §3): RMSNorm,
offset (fused-slice) entries, the row-permuting `swap_scale_shift` function, Conv3d.

Every case goes the way the adapter goes: ComfyUI-layout patch entries -> `patch_deltas` -> `WeakBranch`
hooks on a real torch layer holding θ', one call whose rows mix cond and uncond. The reference is a copy
of the layer whose weights really are θ_ω: the same entries merged with the selected LoRA at ω × its
strength. The merge below states ComfyUI's contract (the entry narrowed to its offset, the function on
the product, optionally chunk by chunk as Neo's LoRA adapter applies it); Neo's own merge is checked in
tests/webui/hosts/probe_dit_layers.py.
"""
import copy

import pytest
import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.deltas import (DenseDelta, LowRankDelta, SlicedLowRankDelta, is_supported, layer_op,
                           low_rank_approximation)
from pg_hosts.patches import patch_deltas

from test_host_syncs import SyncCounter

RMS = getattr(nn, "RMSNorm", None)
needs_rms = pytest.mark.skipif(RMS is None, reason="torch.nn.RMSNorm needs torch >= 2.4")
MASKS = {"uncond_last": [False, False, True, True], "interleaved": [False, True, False, True],
         "first": [True, False, False, False]}


def swap_scale_shift(weight):  # the host's function: the two halves of the rows trade places
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def merge(entries, weight, key, chunk=None):
    """ComfyUI's merge contract: per entry, narrow to its offset, add function(strength · product)."""
    for strength, patch, strength_model, offset, function, *_ in entries:
        function = function or (lambda t: t)
        target = weight.narrow(*offset) if offset is not None else weight
        if strength_model != 1.0:
            target *= strength_model
        kind, values = patch
        if kind == "lora":
            up, down, alpha = values[:3]
            ratio = alpha / down.shape[0] if alpha is not None else 1.0
            diff = (up.flatten(1).double() @ down.flatten(1).double()) * (strength * ratio)
            rows = chunk or diff.shape[0]
            for i in range(0, diff.shape[0], rows):  # Neo's adapter: the function per chunk of rows
                part = target[i:i + rows]
                part += function(diff[i:i + rows]).reshape(part.shape).to(part.dtype)
        elif kind == "diff":
            target += function(strength * values[0].to(target))
        else:
            raise ValueError(kind)
    return weight


def lora(out, inp, rank, seed, kernel=(), alpha=None):
    gen = torch.Generator().manual_seed(seed)
    up = torch.randn(out, rank, *(1,) * len(kernel), generator=gen, dtype=torch.float64) * 0.3
    down = torch.randn(rank, inp, *kernel, generator=gen, dtype=torch.float64) * 0.3
    return ("lora", (up, down, alpha if alpha is not None else float(rank), None, None))


def diff(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return ("diff", (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.2,))


def entry(patch, strength=1.0, offset=None, function=None):
    return (strength, patch, 1.0, offset, function, False)  # Neo's six fields


class Model(nn.Module):
    """One layer under a path, as the adapter's `layer_of` finds it."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer


def build(layer, patches, selected, omega, chunk=None, permutations=(swap_scale_shift,)):
    """(θ' layer, θ_ω layer, PG's deltas): the layer's parameters merged with every entry, and with the
    selected ones at ω × strength."""
    base = {name: p.detach().clone() for name, p in layer.named_parameters()}
    chosen = {id(e) for e in selected}

    def merged(weak):
        out = copy.deepcopy(layer)
        with torch.no_grad():
            for name, param in out.named_parameters():
                entries = [(e[0] * omega,) + tuple(e[1:]) if weak and id(e) in chosen else e
                           for e in patches.get(f"layer.{name}", [])]
                param.copy_(merge(entries, base[name].double().clone(), name, chunk))
        return out

    tuned, weak = merged(False), merged(True)
    model = Model(tuned)

    def layer_of(key):
        path, _, name = key.rpartition(".")
        return model.get_submodule(path), name

    deltas = patch_deltas(patches, chosen, omega, layer_of,
                          lambda key: base[key.split(".", 1)[1]],
                          lambda entries, weight, key: merge(entries, weight, key, chunk),
                          cache=_NoCache(), row_permutations=permutations)
    return tuned, weak, deltas


class _NoCache:
    def get(self, key, entries, selected, omega, layer, build):
        return build()


def check_rows(tuned, weak, deltas, x, mask, exact=False, omega=0.3, tol=2e-6):
    """PG's batched call vs θ' on the cond rows and θ_ω on the weak rows (dense differences come from float32 merges)."""
    mask = torch.tensor(mask)
    with torch.no_grad():
        expected = tuned(x).clone()
        expected[mask] = weak(x[mask])
        with WeakBranch(omega, deltas, exact_weights=exact) as branch:
            branch.mask = mask
            got = tuned(x)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert (expected[mask] - tuned(x)[mask]).abs().max() > 1e-3  # the LoRA really changes the weak rows


# -- P1c: RMSNorm ------------------------------------------------------------------------------------------

class AddRMSNorm(RMS if RMS is not None else nn.Module):
    """Forge Neo's RMSNorm with `add=True` (backend/operations.py:305-330 at de2193d): the weight acts as 1 + w."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add = True

    def forward(self, x):
        return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight + 1.0, self.eps)


@needs_rms
@pytest.mark.parametrize("make", [lambda: RMS(8), lambda: RMS(8, eps=1e-6), lambda: AddRMSNorm(8, eps=1e-5),
                                  lambda: RMS((5, 8), eps=1e-4)],
                         ids=["default_eps", "eps_1e-6", "neo_add", "two_dims"])
@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("exact", [False, True])
def test_rms_norm_weight_entries_are_corrected_in_the_weak_rows(make, layout, exact):
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        layer.weight.normal_()
    shape = tuple(layer.weight.shape)
    subject, style = entry(diff(shape, 1)), entry(diff(shape, 2), 0.8)
    tuned, weak, deltas = build(layer, {"layer.weight": [style, subject]}, [subject], 0.3)
    assert isinstance(deltas[tuned][0], DenseDelta)  # was NotImplementedError: "PG cannot correct that layer type"
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS[layout], exact)


@needs_rms
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rms_norm_correction_runs_in_the_layers_compute_dtype(dtype):
    """In half precision the host's own output is rounded; PG's corrected rows stay within that rounding."""
    torch.manual_seed(1)
    layer = RMS(64, eps=1e-6)
    with torch.no_grad():
        layer.weight.normal_()
    subject = entry(diff((64,), 3))
    tuned, weak, deltas = build(layer, {"layer.weight": [subject]}, [subject], 0.0)
    tuned, weak = tuned.to(dtype), weak.to(dtype)
    x = torch.randn(2, 7, 64).to(dtype)
    mask = torch.tensor([False, True])
    with torch.no_grad(), WeakBranch(0.0, deltas) as branch:
        branch.mask = mask
        got = tuned(x)
        want = weak(x[1:])
    tol = {torch.float16: 4e-3, torch.bfloat16: 4e-2, torch.float32: 1e-5}[dtype]
    assert got.dtype == dtype
    torch.testing.assert_close(got[1:], want, rtol=tol, atol=tol)
    torch.testing.assert_close(got[:1], tuned(x[:1]))


@needs_rms
def test_rms_norm_is_supported_and_its_op_is_linear_in_the_weight():
    layer = RMS(6, eps=1e-6)
    assert is_supported(layer)
    x, a, b = torch.randn(3, 6), torch.randn(6), torch.randn(6)
    torch.testing.assert_close(layer_op(layer, x, a + b, None), layer_op(layer, x, a, None) + layer_op(layer, x, b, None))


# -- P1a: offset (fused-slice) entries ---------------------------------------------------------------------

H = 6  # head width of the fused weights below: qkv is [3H, 8], Flux's linear1 [3H + 4H, 8]


def _qkv_entries(seed, strength=1.0, parts=("q", "k", "v"), rows=3 * H, h=H):
    start = {"q": 0, "k": h, "v": 2 * h, "mlp": 3 * h}
    length = {"q": h, "k": h, "v": h, "mlp": rows - 3 * h}
    return [entry(lora(length[p], 8, 2, seed + i), strength, (0, start[p], length[p])) for i, p in enumerate(parts)]


@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("parts", [("q", "k", "v"), ("q", "v"), ("q", "k", "v", "mlp")],
                         ids=["qkv_tiled", "q_and_v", "flux_linear1"])
def test_offset_entries_are_thin_products_into_their_slices(layout, parts):
    rows = 7 * H if "mlp" in parts else 3 * H
    layer = nn.Linear(8, rows).double()
    subject = _qkv_entries(10, 1.0, parts, rows)
    style = _qkv_entries(20, 0.7, ("k",), rows) + [entry(lora(rows, 8, 3, 30), 0.5)]  # a slice and the whole weight
    tuned, weak, deltas = build(layer, {"layer.weight": style[:1] + subject + style[1:]}, subject, 0.3)
    (delta,) = deltas[tuned]
    assert isinstance(delta, SlicedLowRankDelta)  # was a dense [rows, 8] difference from two host merges
    assert delta.nbytes() < tuned.weight.numel() * tuned.weight.element_size()
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS[layout])


def test_two_selected_loras_on_the_same_slice_and_one_on_the_whole_weight_add_up():
    layer = nn.Linear(8, 3 * H).double()
    first, second = _qkv_entries(40, 1.0, ("q",)), _qkv_entries(50, 0.6, ("q", "v"))
    whole = entry(lora(3 * H, 8, 2, 60), 0.9)
    chosen = first + second + [whole]
    tuned, weak, deltas = build(layer, {"layer.weight": chosen}, chosen, 0.0)
    assert isinstance(deltas[tuned][0], SlicedLowRankDelta)
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS["interleaved"], omega=0.0)


def test_offset_entries_keep_the_bias_difference_of_the_layer():
    layer = nn.Linear(8, 3 * H).double()
    subject = _qkv_entries(70)
    bias_q = entry(diff((H,), 71), 1.0, (0, 0, H))  # a diff_b slice on q
    bias_v = entry(diff((H,), 72), 1.0, (0, 2 * H, H))
    tuned, weak, deltas = build(layer, {"layer.weight": subject, "layer.bias": [bias_q, bias_v]},
                                subject + [bias_q, bias_v], 0.3)
    (delta,) = deltas[tuned]
    assert isinstance(delta, SlicedLowRankDelta) and delta.bias is not None and delta.bias.shape == (3 * H,)
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS["uncond_last"])


@pytest.mark.parametrize("exact", [False, True])
def test_the_exact_weights_path_takes_a_sliced_difference_whole(exact):
    layer = nn.Linear(8, 3 * H).double()
    subject = _qkv_entries(80, parts=("k",))
    tuned, weak, deltas = build(layer, {"layer.weight": subject}, subject, 0.3)
    dense = deltas[tuned][0].dense()
    torch.testing.assert_close(dense.weight, (tuned.weight - weak.weight).detach() / 0.7)
    check_rows(tuned, weak, {tuned: [dense]} if exact else deltas, torch.randn(4, 5, 8, dtype=torch.float64),
               MASKS["first"], exact)


def test_a_slice_that_does_not_fit_the_weight_stops_pg_with_the_key():
    """Lumina 2's diffusers k/v offsets assume as many kv heads as heads (docs/dit-families.md §1.6)."""
    layer = nn.Linear(8, 2 * H).double()
    subject = [entry(lora(H, 8, 2, 90), 1.0, (0, 0, H)), entry(lora(H, 8, 2, 91), 1.0, (0, 2 * H, H))]
    model = Model(layer)
    with pytest.raises(NotImplementedError, match=r"layer\.weight.*rows \[12, 18\).*12-row Linear"):
        patch_deltas({"layer.weight": subject}, {id(e) for e in subject}, 0.3,
                     lambda key: (model.layer, "weight"), lambda key: layer.weight, merge, cache=_NoCache())


def test_an_offset_along_the_input_dimension_stays_dense_and_exact():
    layer = nn.Linear(8, 3 * H).double()
    subject = [entry(lora(3 * H, 4, 2, 95), 1.0, (1, 4, 4))]
    tuned, weak, deltas = build(layer, {"layer.weight": subject}, subject, 0.3)
    assert isinstance(deltas[tuned][0], DenseDelta)
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS["uncond_last"])


# -- P1b: the swap_scale_shift function --------------------------------------------------------------------

class Adapter:
    """A weight-adapter object as ComfyUI and Neo keep LoRAs (`name`, `weights` of six)."""

    name = "lora"

    def __init__(self, up, down, alpha):
        self.weights = (up, down, alpha, None, None, None)


def _adapter_merge(entries, weight, key, chunk=None):
    return merge([e[:1] + (("lora", e[1].weights[:5]) if isinstance(e[1], Adapter) else e[1],) + tuple(e[2:])
                  for e in entries], weight, key, chunk)


@pytest.mark.parametrize("chunk", [None, 4, 5], ids=["whole", "chunks_of_4", "chunks_of_5"])
@pytest.mark.parametrize("layout", sorted(MASKS))
def test_swap_scale_shift_entries_are_low_rank_with_the_hosts_row_order(chunk, layout):
    """Neo's LoRA adapter applies the function per 1024 rows (comfy/weight_adapter/lora.py:200-209), so on a
    wider weight each chunk's halves are swapped, not the whole weight's: PG follows the host's merge."""
    layer = nn.Linear(8, 12).double()
    subject = entry(lora(12, 8, 2, 100), 1.0, None, swap_scale_shift)
    style = entry(lora(12, 8, 2, 101), 0.5, None, swap_scale_shift)
    tuned, weak, deltas = build(layer, {"layer.weight": [style, subject]}, [subject], 0.3, chunk=chunk)
    (delta,) = deltas[tuned]
    assert isinstance(delta, LowRankDelta)  # was dense: any function went to the host's merge
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS[layout])


def test_swap_scale_shift_on_an_adapter_object_is_probed_through_a_copy_of_it():
    layer = nn.Linear(8, 12).double()
    gen = torch.Generator().manual_seed(5)
    subject = entry(Adapter(torch.randn(12, 2, generator=gen, dtype=torch.float64),
                            torch.randn(2, 8, generator=gen, dtype=torch.float64), 1.0), 1.0, None, swap_scale_shift)
    before = subject[1].weights
    model = Model(copy.deepcopy(layer))
    with torch.no_grad():
        model.layer.weight.copy_(_adapter_merge([subject], layer.weight.detach().clone(), "k", 5))
    deltas = patch_deltas({"layer.weight": [subject]}, {id(subject)}, 0.0, lambda key: (model.layer, "weight"),
                          lambda key: layer.weight, lambda e, w, k: _adapter_merge(e, w, k, 5), cache=_NoCache(),
                          row_permutations=(swap_scale_shift,))
    assert subject[1].weights is before  # the host's patch is not touched
    (delta,) = deltas[model.layer]
    torch.testing.assert_close(delta.dense().weight, (model.layer.weight - layer.weight).detach())


def test_other_functions_stay_dense_and_exact():
    layer = nn.Linear(8, 12).double()
    subject = entry(lora(12, 8, 2, 110), 1.0, None, lambda t: t * 2.0)
    tuned, weak, deltas = build(layer, {"layer.weight": [subject]}, [subject], 0.3)
    assert isinstance(deltas[tuned][0], DenseDelta)
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS["interleaved"])


@pytest.mark.parametrize("impostor", [lambda t: t.flip(1), lambda t: t * 2.0, lambda t: t.flip(0) ** 1.0 + 1.0],
                         ids=["columns_flipped", "scaled", "shifted"])
def test_a_declared_permutation_that_does_not_only_move_rows_goes_dense(impostor):
    layer = nn.Linear(8, 12).double()
    subject = entry(lora(12, 8, 2, 120), 1.0, None, impostor)
    tuned, weak, deltas = build(layer, {"layer.weight": [subject]}, [subject], 0.3, permutations=(impostor,))
    assert isinstance(deltas[tuned][0], DenseDelta)


def test_swap_scale_shift_on_a_slice_permutes_within_the_slice():
    layer = nn.Linear(8, 16).double()
    subject = entry(lora(8, 8, 2, 130), 1.0, (0, 4, 8), swap_scale_shift)
    tuned, weak, deltas = build(layer, {"layer.weight": [subject]}, [subject], 0.3)
    assert isinstance(deltas[tuned][0], SlicedLowRankDelta)
    check_rows(tuned, weak, deltas, torch.randn(4, 5, 8, dtype=torch.float64), MASKS["uncond_last"])


# -- P2b: Conv3d (Wan's patch_embedding) -------------------------------------------------------------------

CONV3D = {"patch": lambda: nn.Conv3d(4, 6, (1, 2, 2), stride=(1, 2, 2)),
          "padded": lambda: nn.Conv3d(4, 6, 3, padding=1, dilation=1),
          "strided": lambda: nn.Conv3d(4, 6, (2, 3, 3), stride=2, padding=(0, 1, 1))}


@pytest.mark.parametrize("kind", sorted(CONV3D))
@pytest.mark.parametrize("form", ["locon", "dense"])
@pytest.mark.parametrize("layout", sorted(MASKS))
@pytest.mark.parametrize("exact", [False, True])
def test_conv3d_entries_are_corrected_in_the_weak_rows(kind, form, layout, exact):
    layer = CONV3D[kind]().double()
    shape = tuple(layer.weight.shape)
    if form == "locon":
        subject = entry(lora(6, 4, 2, 140, kernel=layer.kernel_size, alpha=1.0))
    else:
        subject = entry(diff(shape, 141))
    bias = entry(diff((6,), 142))
    style = entry(lora(6, 4, 3, 143, kernel=layer.kernel_size), 0.6)
    tuned, weak, deltas = build(layer, {"layer.weight": [style, subject], "layer.bias": [bias]}, [subject, bias], 0.3)
    (delta,) = deltas[tuned]  # was NotImplementedError: Conv3d was not a layer PG could correct
    assert isinstance(delta, LowRankDelta if form == "locon" else DenseDelta) and delta.bias is not None
    check_rows(tuned, weak, deltas, torch.randn(4, 4, 3, 6, 6, dtype=torch.float64), MASKS[layout], exact)


def test_a_conv3d_difference_factorizes_for_the_checkpoint_path():
    layer = nn.Conv3d(4, 6, (1, 2, 2), stride=(1, 2, 2)).double()
    gen = torch.Generator().manual_seed(7)
    weight = (torch.randn(6, 2, dtype=torch.float64, generator=gen) @ torch.randn(2, 16, dtype=torch.float64,
                                                                                   generator=gen)).reshape(6, 4, 1, 2, 2)
    approx, error = low_rank_approximation(DenseDelta(weight), energy=0.999)
    assert isinstance(approx, LowRankDelta) and approx.up.shape == (6, 2, 1, 1, 1) and error < 1e-6
    x = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(approx.contribution(layer, x), layer_op(layer, x, weight, None), rtol=1e-5, atol=1e-5)


# -- no device syncs in the new paths ----------------------------------------------------------------------

@needs_rms
def test_the_new_corrections_need_no_device_sync():
    layers = nn.ModuleList([nn.Linear(8, 3 * H), RMS(3 * H), nn.Conv3d(3 * H, 4, 1)])
    x = torch.randn(4, 3 * H, 2, 2, 8)
    subject = _qkv_entries(150)
    norm, conv = entry(diff((3 * H,), 151)), entry(lora(4, 3 * H, 2, 152, kernel=(1, 1, 1)))
    found = {}
    for index, (layer, entries) in enumerate(zip(layers, (subject, [norm], [conv]))):
        found.update(patch_deltas({f"{index}.weight": entries}, {id(e) for e in entries}, 0.3,
                                  lambda key, layer=layer: (layer, "weight"), lambda key, layer=layer: layer.weight,
                                  merge, cache=_NoCache()))

    def forward(x):
        h = layers[0](x)
        h = layers[1](h)
        return layers[2](h.permute(0, 4, 1, 2, 3))

    with torch.no_grad(), WeakBranch(0.3, found) as branch:
        branch.mask = torch.tensor([False, False, True, True])  # read to the host here, before the call
        forward(x)  # first call places the deltas
        with SyncCounter() as counter:
            forward(x)
    assert counter.count == 0, counter.ops


# -- P2c: Embedding, in the weak prompt's encode (every row weak) ------------------------------------------

def _embedding_entries(layer, form, seed):
    if form == "lora":  # ComfyUI's LoRA on an embedding table: up [num, r] @ down [r, dim]
        gen = torch.Generator().manual_seed(seed)
        up = torch.randn(layer.num_embeddings, 2, generator=gen, dtype=torch.float64) * 0.3
        down = torch.randn(2, layer.embedding_dim, generator=gen, dtype=torch.float64) * 0.3
        return entry(("lora", (up, down, 1.0, None, None)))
    return entry(diff(tuple(layer.weight.shape), seed))


@pytest.mark.parametrize("form", ["lora", "diff"])
@pytest.mark.parametrize("exact", [False, True])
def test_embedding_entries_are_corrected_in_the_weak_prompts_encode(form, exact):
    from pg_ext.branch import ALL_ROWS

    layer = nn.Embedding(20, 8, padding_idx=0).double()
    subject = _embedding_entries(layer, form, 160)
    style = (0.7,) + _embedding_entries(layer, form, 161)[1:]  # an unselected LoRA on the same table
    base = layer.weight.detach().clone()
    model = Model(copy.deepcopy(layer))
    tuned, weak = copy.deepcopy(layer), copy.deepcopy(layer)
    with torch.no_grad():
        tuned.weight.copy_(merge([style, subject], base.clone(), "w"))
        weak.weight.copy_(merge([style, (subject[0] * 0.3,) + subject[1:]], base.clone(), "w"))
        model.layer.weight.copy_(tuned.weight)
    deltas = patch_deltas({"layer.weight": [style, subject]}, {id(subject)}, 0.3, lambda key: (model.layer, "weight"),
                          lambda key: base, merge, cache=_NoCache(), every_row_weak=True)
    (delta,) = deltas[model.layer]
    assert isinstance(delta, LowRankDelta if form == "lora" else DenseDelta)  # was NotImplementedError
    ids = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(162))
    with torch.no_grad(), WeakBranch(0.3, deltas, exact_weights=exact) as branch:
        branch.mask = ALL_ROWS
        got = model.layer(ids)
    torch.testing.assert_close(got, weak(ids), rtol=2e-6, atol=2e-6)
    assert (got - tuned(ids)).abs().max() > 1e-3


def test_an_embedding_in_a_marked_call_or_with_max_norm_stops_pg():
    """Outside the weak encode an Embedding's ids need not carry the call's rows first (T5's [L, L] relative
    buckets); `max_norm` rescales rows of the table it looks up: not linear in the weight."""
    for layer, every_row_weak, reason in ((nn.Embedding(20, 8), False, "outside the text encoder"),
                                          (nn.Embedding(20, 8, max_norm=1.0), True, "Embedding.weight")):
        subject = _embedding_entries(layer, "diff", 170)
        with pytest.raises(NotImplementedError, match=reason):
            patch_deltas({"layer.weight": [subject]}, {id(subject)}, 0.3, lambda key: (layer, "weight"),
                         lambda key: layer.weight, merge, cache=_NoCache(), every_row_weak=every_row_weak)
