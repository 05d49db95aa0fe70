"""Only the differences PG uses are built: no dense update for layers or networks it does not need.

A dense update (`calc_updown`) costs a full-size matmul per layer (hundreds per pass on SDXL), so the
networks that are not selected are evaluated only where a selected dense type needs the running weight.
"""
import torch
from torch import nn

from pg_ext.deltas import DenseDelta, LowRankDelta
from pg_hosts.a1111_networks import layer_deltas_for

from network_types import Hada, Lora, Net


def _layer(name):
    layer = nn.Linear(8, 6)
    layer.network_layer_name = name
    return layer


def _count_calls(module):
    calls = []
    original = module.calc_updown

    def counted(weight):
        calls.append(weight.clone())
        return original(weight)

    module.calc_updown = counted
    return calls


def test_layers_only_unselected_networks_touch_build_nothing():
    layer = _layer("only_style")
    style, subject = Net("style"), Net("subject")
    style.modules["only_style"] = Hada(style, layer)
    calls = _count_calls(style.modules["only_style"])
    assert layer_deltas_for(layer, [style, subject], [subject]) == []
    assert calls == []


def test_plain_lora_after_unselected_dense_network_needs_no_running_weight():
    layer = _layer("both")
    style, subject = Net("style"), Net("subject")
    style.modules["both"] = Hada(style, layer)
    subject.modules["both"] = Lora(subject, layer)
    calls = _count_calls(style.modules["both"])
    deltas = layer_deltas_for(layer, [style, subject], [subject])
    assert len(deltas) == 1 and isinstance(deltas[0], LowRankDelta)
    assert calls == []


def test_dense_selected_network_sees_the_running_weight_of_the_networks_ahead():
    layer = _layer("both")
    style, subject = Net("style"), Net("subject")
    style.modules["both"] = Lora(style, layer, seed=3)
    subject.modules["both"] = Hada(subject, layer)
    calls = _count_calls(subject.modules["both"])
    deltas = layer_deltas_for(layer, [style, subject], [subject])
    assert len(deltas) == 1 and isinstance(deltas[0], DenseDelta)
    ahead = style.modules["both"].calc_updown(layer.weight.detach())[0]
    assert len(calls) == 1
    torch.testing.assert_close(calls[0], layer.weight.detach() + ahead)
