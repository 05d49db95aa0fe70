"""Differences of weights stored in fp8/int8 keep their precision (issue 17 item 3).

A 1e-3-scale difference cast to float8_e4m3fn loses about a third of its value on average and is zero in
many entries; PG must keep it in float32 (or the weight's own dtype when that has 16 bits or more).
"""
import torch
from torch import nn

from pg_ext.checkpoint import _difference
from pg_ext.deltas import DenseDelta
from pg_hosts.patches import patch_deltas


def _fp8_linear(seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(16, 8, bias=False)
    layer.weight = nn.Parameter(torch.randn(8, 16, generator=gen).to(torch.float8_e4m3fn), requires_grad=False)
    return layer


def test_difference_dtype_keeps_16_bit_floats_and_widens_the_rest():
    from pg_ext.deltas import difference_dtype

    assert difference_dtype(torch.float16) is torch.float16 and difference_dtype(torch.bfloat16) is torch.bfloat16
    assert difference_dtype(torch.float8_e4m3fn) is torch.float32 and difference_dtype(torch.int8) is torch.float32


def test_a_dense_lora_difference_on_fp8_storage_is_kept_whole():
    layer = _fp8_linear()
    small = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)) * 1e-3
    entry = (1.0, small, 1.0, None, None)  # not a plain LoRA: the dense path, merged by the host's function

    def merge(entries, weight, key):
        return weight + sum(e[0] * e[1] for e in entries)

    deltas = patch_deltas({"w.weight": [entry]}, {id(entry)}, 0.0, lambda key: (layer, "weight"),
                          lambda key: layer.weight, merge)
    (delta,) = deltas[layer]
    assert isinstance(delta, DenseDelta) and delta.weight.dtype == torch.float32
    torch.testing.assert_close(delta.weight, small, atol=1e-7, rtol=1e-4)


def test_a_base_checkpoint_difference_on_fp8_storage_is_kept_whole():
    layer = _fp8_linear()
    unet = nn.Sequential(layer)
    base = layer.weight.float() - torch.randn(8, 16, generator=torch.Generator().manual_seed(2)) * 1e-3
    _, _, diff = _difference(unet, {"0.weight": layer.weight}, "0.weight", base, None)
    assert diff.dtype == torch.float32
    torch.testing.assert_close(diff, layer.weight.float() - base, atol=1e-7, rtol=1e-4)


# -- a host that merges LoRAs into fp8-stored weights (Neo/reForge offline: θ' and θ_ω each rounded) --------

def _lora_entry(seed=3, rank=2):
    gen = torch.Generator().manual_seed(seed)
    up, down = torch.randn(8, rank, generator=gen) * 0.3, torch.randn(rank, 16, generator=gen) * 0.3
    return (1.0, ("lora", (up, down, float(rank), None, None)), 1.0, None, None)


def _merge_then_round(entries, weight, key):
    """A host merge (plain LoRA entries added) written back to fp8 by round-to-nearest, back in float32."""
    for strength, (_, (up, down, alpha, _, _)), *_ in entries:
        weight = weight + strength * (alpha / down.shape[0]) * (up @ down)
    return weight.to(torch.float8_e4m3fn).float()


def _weak_weight(deltas, layer, patched, omega):
    """The weight a weak row computes with: the host's θ' minus PG's (1 − ω)·D."""
    (delta,) = deltas[layer]
    difference = delta.weight if isinstance(delta, DenseDelta) else delta.up.float() @ delta.down.float() * delta.scale
    return patched - (1.0 - omega) * difference.float()


def test_an_fp8_weight_the_host_rounds_on_merge_is_corrected_to_the_hosts_own_weak_weight():
    layer, entry = _fp8_linear(), _lora_entry()
    base = layer.weight.float()
    patched = _merge_then_round([entry], base.clone(), "w.weight")           # θ' as the host stores it
    weak = _merge_then_round([(0.25,) + entry[1:]], base.clone(), "w.weight")  # θ_ω at ω = 0.25, as the host would
    deltas = patch_deltas({"w.weight": [entry]}, {id(entry)}, 0.25, lambda key: (layer, "weight"),
                          lambda key: layer.weight, _merge_then_round, rounded_on_merge=lambda key, entries: True)
    assert isinstance(deltas[layer][0], DenseDelta)
    torch.testing.assert_close(_weak_weight(deltas, layer, patched, 0.25), weak, atol=1e-6, rtol=0)


def test_without_the_rounding_the_low_rank_path_misses_the_hosts_weak_weight_by_fp8_steps():
    """The same case on the low-rank path (what PG did before): off by whole fp8 rounding steps."""
    layer, entry = _fp8_linear(), _lora_entry()
    base = layer.weight.float()
    patched = _merge_then_round([entry], base.clone(), "w.weight")
    weak = _merge_then_round([(0.25,) + entry[1:]], base.clone(), "w.weight")
    deltas = patch_deltas({"w.weight": [entry]}, {id(entry)}, 0.25, lambda key: (layer, "weight"),
                          lambda key: layer.weight, _merge_then_round)
    assert not isinstance(deltas[layer][0], DenseDelta)
    assert float((_weak_weight(deltas, layer, patched, 0.25) - weak).abs().max()) > 0.01


class _Patcher:
    def __init__(self, dtype):
        self.model = nn.Sequential(nn.Linear(16, 8, bias=False))
        self.model[0].weight = nn.Parameter(self.model[0].weight.detach().to(dtype), requires_grad=False)


def test_merged_into_fp8_reads_the_stored_dtype_and_the_online_flag():
    from pg_hosts.comfy import merged_into_fp8

    offline, online = (1.0, None, 1.0, None, None, False), (1.0, None, 1.0, None, None, True)
    fp8 = merged_into_fp8(_Patcher(torch.float8_e4m3fn), online_flag=5)
    assert fp8("0.weight", [offline]) and not fp8("0.weight", [online, offline])
    assert not merged_into_fp8(_Patcher(torch.bfloat16), online_flag=5)("0.weight", [offline])
    assert merged_into_fp8(_Patcher(torch.float8_e5m2))("0.weight", [offline[:5]])  # reForge: no online field
    assert not fp8("missing.weight", [offline])


def test_rounding_merge_rounds_offline_merges_to_the_stored_dtype_only():
    from pg_hosts.comfy import rounding_merge

    calls = []

    def round_to(value, dtype, key):
        calls.append((dtype, key))
        return value.to(dtype)

    merge = rounding_merge(lambda entries, weight, key: weight + 0.001, _Patcher(torch.bfloat16), round_to, online_flag=5)
    weight = torch.full((8, 16), 1.0)
    out = merge([(1.0, None, 1.0, None, None, False)], weight.clone(), "0.weight")
    assert out.dtype == torch.float32 and calls == [(torch.bfloat16, "0.weight")]
    assert torch.equal(out, (weight + 0.001).to(torch.bfloat16).float())
    online = merge([(1.0, None, 1.0, None, None, True)], weight.clone(), "0.weight")
    assert torch.equal(online, weight + 0.001) and len(calls) == 1  # merged per forward: never rounded
