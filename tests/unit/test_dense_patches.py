"""Dense LoRA differences in ComfyUI's patch layout (issue 17 item 7): what a bias-only patch costs, and
that the host's merge runs once per key for the same entries and ω (cached across passes and jobs)."""
import pytest
import torch
from torch import nn

import pg_ext.deltas as deltas_module
from pg_ext.branch import WeakBranch
from pg_ext.deltas import layer_op
from pg_ext.patches import patch_deltas


def _merge(entries, weight, key):  # an affine host merge: weight + Σ strength · diff
    for entry in entries:
        weight = weight + entry[0] * entry[1]
    return weight


LAYERS = {
    "linear": lambda: nn.Linear(6, 5),
    "conv": lambda: nn.Conv2d(3, 4, 3, padding=1),
    "groupnorm": lambda: nn.GroupNorm(2, 4),
    "layernorm": lambda: nn.LayerNorm(6),
}
INPUTS = {"linear": (3, 7, 6), "conv": (3, 3, 5, 5), "groupnorm": (3, 4, 5, 5), "layernorm": (3, 7, 6)}


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("exact_weights", [False, True])
def test_a_bias_only_patch_costs_only_the_bias_add_on_the_weak_rows(kind, exact_weights, monkeypatch):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    bias_diff = torch.randn_like(layer.bias) * 0.1
    entry = (1.0, bias_diff, 1.0, None, None)
    omega = 0.25
    found = patch_deltas({"m.bias": [entry]}, {id(entry)}, omega, lambda key: (layer, "bias"),
                         lambda key: layer.bias, _merge)
    x = torch.randn(*INPUTS[kind])
    with torch.no_grad():
        personalized = layer(x)
        expected = personalized.clone()
        weak_bias = layer.bias - (1 - omega) * bias_diff
        expected[2:] = layer_op(layer, x[2:], layer.weight, weak_bias)
        ops = []
        original_op = deltas_module.layer_op
        monkeypatch.setattr(deltas_module, "layer_op", lambda *a: ops.append(a) or original_op(*a))
        with WeakBranch(omega, found, exact_weights=exact_weights) as branch:
            branch.mask = torch.tensor([False, False, True])
            out = layer(x)
    torch.testing.assert_close(out, expected)
    assert ops == []  # was one full layer op on the weak rows with a zero weight (or a split layer)
