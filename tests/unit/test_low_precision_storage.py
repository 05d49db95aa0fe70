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
