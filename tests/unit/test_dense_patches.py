"""Dense LoRA differences in ComfyUI's patch layout (issue 17 item 7): what a bias-only patch costs, and
that the host's merge runs once per key for the same entries and ω (cached across passes and jobs)."""
import pytest
import torch
from torch import nn

import pg_ext.deltas as deltas_module
from pg_ext.branch import WeakBranch
from pg_ext.deltas import layer_op
from pg_hosts.patches import patch_deltas


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


def _loha_like(layer, seed):  # not a plain LoRA: the dense path, merged by the host's function
    gen = torch.Generator().manual_seed(seed)
    return (1.0, torch.randn(layer.weight.shape, generator=gen) * 0.1, 1.0, None, None)


def test_dense_differences_are_merged_once_for_the_same_entries_and_omega():
    from pg_hosts.patches import DenseDifferences

    layer = nn.Linear(4, 3)
    weight_entry, bias_entry = _loha_like(layer, 1), (1.0, torch.randn(3) * 0.1, 1.0, None, None)
    patches = {"m.weight": [weight_entry], "m.bias": [bias_entry]}
    selected = {id(weight_entry), id(bias_entry)}
    merges = []

    def merge(entries, weight, key):
        merges.append(key)
        return _merge(entries, weight, key)

    cache = DenseDifferences()

    def deltas(omega, patches=patches, selected=selected):
        found = patch_deltas(patches, selected, omega, lambda key: (layer, key.split(".")[1]),
                             lambda key: getattr(layer, key.split(".")[1]), merge, cache=cache)
        cache.end_round()
        return found[layer][0]

    first = deltas(0.3)
    assert sorted(merges) == ["m.bias"] * 2 + ["m.weight"] * 2  # θ' and θ_ω, once per key
    merges.clear()
    again = deltas(0.3)  # a hires pass, or the next job with the same LoRAs and ω
    assert merges == []  # was 4 more merges
    assert torch.equal(again.weight, first.weight) and torch.equal(again.bias, first.bias)
    deltas(0.1)  # another ω (a schedule's lowest): merged anew
    assert sorted(merges) == ["m.bias"] * 2 + ["m.weight"] * 2
    merges.clear()
    other = _loha_like(layer, 2)  # the prompt's LoRAs changed: new entries
    deltas(0.1, {"m.weight": [other]}, {id(other)})
    assert merges == ["m.weight"] * 2
    assert len(cache) == 1  # the bias record, unused by that pass, is dropped


def test_a_cached_dense_difference_is_not_reused_for_another_models_layer():
    from pg_hosts.patches import DenseDifferences

    layers = [nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)]  # one key in two models
    entry = _loha_like(layers[0], 3)
    cache = DenseDifferences()
    merges = []

    def merge(entries, weight, key):
        merges.append(key)
        return _merge(entries, weight, key)

    for layer in layers + layers[1:]:
        patch_deltas({"m.weight": [entry]}, {id(entry)}, 0.5, lambda key: (layer, "weight"),
                     lambda key: layer.weight.detach().clone(), merge, cache=cache)  # a new backup tensor each pass
    assert len(merges) == 4  # one merge pair per layer, none for the repeat with a fresh copy of the same base
