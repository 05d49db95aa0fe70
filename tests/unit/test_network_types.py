"""Every network type: PG's weak rows equal the layer merged with the selected networks at ω × strength."""
import copy

import pytest
import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.deltas import DenseDelta, LowRankDelta
from pg_ext.selection import select_networks
from pg_hosts.a1111_networks import layer_deltas_for

import network_types as nt

LINEAR = lambda: nn.Linear(8, 6)
CONV = lambda: nn.Conv2d(8, 6, 3, padding=1)
CASES = {
    "lora_linear": (LINEAR, lambda n, l: nt.Lora(n, l), LowRankDelta),
    "locon_conv": (CONV, lambda n, l: nt.Lora(n, l), LowRankDelta),
    "lora_cp_mid": (CONV, lambda n, l: nt.Lora(n, l, mid=True), DenseDelta),
    "dora": (LINEAR, lambda n, l: nt.Lora(n, l, dora=True), DenseDelta),
    "loha": (LINEAR, lambda n, l: nt.Hada(n, l), DenseDelta),
    "loha_conv": (CONV, lambda n, l: nt.Hada(n, l), DenseDelta),
    "lokr": (LINEAR, lambda n, l: nt.Lokr(n, l), DenseDelta),
    "ia3": (LINEAR, lambda n, l: nt.Ia3(n, l), DenseDelta),
    "oft": (LINEAR, lambda n, l: nt.Oft(n, l), DenseDelta),
    "glora": (LINEAR, lambda n, l: nt.Glora(n, l), DenseDelta),
    "full_diff": (CONV, lambda n, l: nt.Full(n, l), DenseDelta),
    "norm_group": (lambda: nn.GroupNorm(2, 8), lambda n, l: nt.Norm(n, l), DenseDelta),
    "norm_layer": (lambda: nn.LayerNorm(8), lambda n, l: nt.Norm(n, l), DenseDelta),
}


def _x(layer):
    return torch.randn(4, 8, 6, 6) if isinstance(layer, (nn.Conv2d, nn.GroupNorm)) else torch.randn(4, 5, 8)


def _setup(make_layer, modules, strengths):
    layer = make_layer()
    layer.network_layer_name = "diffusion_model_layer"
    nets = []
    for i, (make_module, strength) in enumerate(zip(modules, strengths)):
        net = nt.Net(f"net{i}", strength)
        net.modules[layer.network_layer_name] = make_module(net, layer)
        nets.append(net)
    return layer, nets


def _reference(layer, nets, selected, omega, x, mask):
    """Slow reference: one copy merged at full strength (cond rows), one at ω × strength (weak rows)."""
    full, weak = copy.deepcopy(layer), copy.deepcopy(layer)
    for copy_ in (full, weak):
        copy_.network_weights_backup = None
    nt.merge(full, nets, {})
    nt.merge(weak, nets, {n.name: n.unet_multiplier * omega for n in selected})
    out = full(x).detach().clone()
    out[mask] = weak(x[mask]).detach()
    return out


def _check(layer, nets, selected, omega, mask, exact):
    """PG on the host-merged layer equals the slow reference; returns the deltas it used."""
    x = _x(layer)
    expected = _reference(layer, nets, selected, omega, x, mask)
    nt.merge(layer, nets, {})  # what the host holds during sampling
    deltas = layer_deltas_for(layer, nets, selected)
    with torch.no_grad(), WeakBranch(omega, {layer: deltas}, exact_weights=exact) as branch:
        branch.mask = mask
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    return deltas


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("exact", [False, True])
def test_each_network_type_matches_the_merged_reference(case, exact):
    torch.manual_seed(0)
    make_layer, make_module, kind = CASES[case]
    layer, nets = _setup(make_layer, [make_module], [0.8])
    deltas = _check(layer, nets, nets, 0.3, torch.tensor([True, False, False, True]), exact)
    assert len(deltas) == 1 and isinstance(deltas[0], kind)


@pytest.mark.parametrize("exact", [False, True])
def test_unselected_network_keeps_full_strength_in_both_branches(exact):
    torch.manual_seed(1)
    layer, nets = _setup(CONV, [lambda n, l: nt.Lora(n, l, seed=1), lambda n, l: nt.Hada(n, l, seed=2)], [1.0, 0.7])
    selected, unknown = select_networks(nets, ["NET0"])
    assert selected == [nets[0]] and unknown == []
    _check(layer, nets, selected, 0.2, torch.tensor([False, False, True, True]), exact)


def test_two_selected_networks_on_one_layer_scale_together():
    torch.manual_seed(2)
    layer, nets = _setup(LINEAR, [lambda n, l: nt.Lora(n, l, seed=3), lambda n, l: nt.Full(n, l, seed=4)], [1.0, 0.5])
    assert len(_check(layer, nets, nets, 0.6, torch.tensor([True, True, False, False]), True)) == 2


def test_unknown_names_are_reported_and_file_names_match():
    nets = [nt.Net("subject"), nt.Net("style")]
    selected, unknown = select_networks(nets, ["subject", "missing"])
    assert selected == [nets[0]] and unknown == ["missing"]
    assert select_networks(nets, [])[0] == nets
    assert select_networks(nets, ["STYLE"])[0] == [nets[1]]


def test_sd_lora_on_an_inpainting_input_conv_is_zero_padded_like_the_host():
    """A LoRA trained on 4-channel SD on a 9-channel inpainting conv_in: the extra channels get no delta."""
    torch.manual_seed(4)
    four = nn.Conv2d(4, 6, 3, padding=1)
    layer = nn.Conv2d(9, 6, 3, padding=1)
    layer.network_layer_name = "diffusion_model_input_blocks_0_0"
    net = nt.Net("subject", 1.0)
    module = nt.Lora(net, four)
    net.modules[layer.network_layer_name] = module
    deltas = layer_deltas_for(layer, [net], [net])
    assert len(deltas) == 1 and isinstance(deltas[0], DenseDelta) and deltas[0].weight.shape == layer.weight.shape
    assert torch.count_nonzero(deltas[0].weight[:, 4:]) == 0


def test_sd2_text_encoder_attention_is_interpolated_exactly():
    """OpenCLIP's nn.MultiheadAttention with LoRA modules named <layer>_q_proj/_k_proj/_v_proj/_out_proj."""
    from pg_ext.branch import ALL_ROWS
    from pg_hosts.a1111_networks import collect_deltas

    torch.manual_seed(7)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    mha.network_layer_name = "model_transformer_resblocks_0_attn"
    net = nt.Net("subject", 0.9)
    for i, part in enumerate(("_q_proj", "_k_proj", "_v_proj", "_out_proj")):
        net.modules[mha.network_layer_name + part] = nt.Lora(net, nn.Linear(8, 8), seed=10 + i)

    def merged(strength):
        copy_ = copy.deepcopy(mha)
        saved, net.unet_multiplier = net.unet_multiplier, strength
        with torch.no_grad():
            q, k, v = copy_.in_proj_weight.chunk(3, 0)
            parts = [net.modules[mha.network_layer_name + s] for s in ("_q_proj", "_k_proj", "_v_proj", "_out_proj")]
            copy_.in_proj_weight += torch.vstack([parts[0].calc_updown(q)[0], parts[1].calc_updown(k)[0],
                                                  parts[2].calc_updown(v)[0]])
            copy_.out_proj.weight += parts[3].calc_updown(copy_.out_proj.weight)[0]
        net.unet_multiplier = saved
        return copy_

    full, weak = merged(0.9), merged(0.9 * 0.25)
    x = torch.randn(2, 5, 8)
    deltas = collect_deltas([full], [net], [net])
    with torch.no_grad(), WeakBranch(0.25, deltas) as branch:
        branch.mask = ALL_ROWS
        got = full(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(got, weak(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)
