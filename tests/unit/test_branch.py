"""WeakBranch on real torch layers: the weak rows see θ_ω exactly, the cond rows θ', nothing stays behind."""
import copy

import pytest
import torch
from torch import nn

from pg_ext.branch import ALL_ROWS, ParamDeltas, WeakBranch
from pg_ext.deltas import DenseDelta, LowRankDelta, low_rank_approximation

LAYERS = {
    "linear": lambda: nn.Linear(8, 6),
    "conv3x3": lambda: nn.Conv2d(8, 6, 3, padding=1),
    "conv_strided": lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1),
    "conv1x1": lambda: nn.Conv2d(8, 6, 1),
    "groupnorm": lambda: nn.GroupNorm(2, 8),
    "layernorm": lambda: nn.LayerNorm(8),
}


def _input(layer, rows=4):
    if isinstance(layer, (nn.Conv2d, nn.GroupNorm)):
        return torch.randn(rows, 8, 6, 6)
    return torch.randn(rows, 5, 8)


def _tuned(layer, seed=3):
    tuned = copy.deepcopy(layer)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return tuned


def _weak(base, tuned, omega):
    weak = copy.deepcopy(tuned)
    with torch.no_grad():
        for p, b in zip(weak.parameters(), base.parameters()):
            p.copy_(torch.lerp(b, p, omega))
    return weak


def _dense(base, tuned):
    return DenseDelta(tuned.weight.detach() - base.weight.detach(), tuned.bias.detach() - base.bias.detach())


MASKS = {"interleaved": [False, True, False, True], "uncond_last": [False, False, True, True],
         "middle_block": [False, True, True, False], "first": [True, False, False, False]}


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("omega", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("layout", sorted(MASKS))
def test_weak_rows_see_interpolated_weights(kind, exact, omega, layout):
    torch.manual_seed(0)
    base = LAYERS[kind]()
    tuned = _tuned(base)
    x = _input(base)
    mask = torch.tensor(MASKS[layout])
    expected = tuned(x).detach().clone()
    expected[mask] = _weak(base, tuned, omega)(x[mask]).detach()
    params_before = [p.detach().clone() for p in tuned.parameters()]
    with torch.no_grad(), WeakBranch(omega, {tuned: [_dense(base, tuned)]}, exact_weights=exact) as branch:
        branch.mask = mask
        got = tuned(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not tuned._forward_hooks and not tuned._forward_pre_hooks
    assert all(torch.equal(a, b) for a, b in zip(params_before, tuned.parameters()))


@pytest.mark.parametrize("exact", [False, True])
def test_all_rows_weak_and_no_rows_weak(exact):
    torch.manual_seed(1)
    base = nn.Conv2d(8, 6, 3, padding=1)
    tuned = _tuned(base)
    x = _input(base)
    branch = WeakBranch(0.25, {tuned: [_dense(base, tuned)]}, exact_weights=exact)
    with torch.no_grad(), branch:
        branch.mask = torch.ones(4, dtype=torch.bool)
        all_weak = tuned(x)
        branch.mask = torch.zeros(4, dtype=torch.bool)
        none_weak = tuned(x)
        branch.mask = None
        unmasked = tuned(x)
    torch.testing.assert_close(all_weak, _weak(base, tuned, 0.25)(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(none_weak, tuned(x)) and torch.equal(unmasked, tuned(x))


def test_low_rank_delta_equals_its_dense_form_on_linear_and_conv():
    torch.manual_seed(2)
    for layer, down, up in [
        (nn.Linear(8, 6), torch.randn(3, 8), torch.randn(6, 3)),
        (nn.Conv2d(8, 6, 3, padding=1), torch.randn(3, 8, 3, 3), torch.randn(6, 3, 1, 1)),
    ]:
        delta = LowRankDelta(down, up, scale=0.7)
        x = _input(layer)
        from pg_ext.deltas import layer_op
        torch.testing.assert_close(delta.contribution(layer, x), layer_op(layer, x, delta.dense().weight, None),
                                   rtol=1e-4, atol=1e-4)


def test_batch_repeated_inside_attention_expands_the_mask():
    """HyperTile runs attention layers on the call's rows repeated b-major; the mask follows."""
    torch.manual_seed(3)
    base = nn.Linear(8, 6)
    tuned = _tuned(base)
    x = torch.randn(2 * 3, 5, 8)  # 2 rows of the call, 3 tiles each
    mask = torch.tensor([False, True])
    expected = tuned(x).detach().clone()
    expected[3:] = _weak(base, tuned, 0.5)(x[3:]).detach()
    with torch.no_grad(), WeakBranch(0.5, {tuned: [_dense(base, tuned)]}) as branch:
        branch.mask = mask
        torch.testing.assert_close(tuned(x), expected, rtol=1e-5, atol=1e-5)


def test_multihead_attention_is_recomputed_when_every_row_is_weak():
    torch.manual_seed(4)
    base = nn.MultiheadAttention(8, 2, batch_first=True)
    tuned = _tuned(base)
    deltas = ParamDeltas({name: (p - q).detach() for (name, p), (_, q) in
                          zip(tuned.named_parameters(), base.named_parameters())})
    x = torch.randn(3, 5, 8)
    weak = _weak(base, tuned, 0.4)
    with torch.no_grad(), WeakBranch(0.4, {tuned: deltas}) as branch:
        branch.mask = ALL_ROWS
        got = tuned(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(got, weak(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def test_low_rank_approximation_keeps_the_requested_energy():
    torch.manual_seed(5)
    weight = torch.randn(64, 4) @ torch.randn(4, 48) + 0.01 * torch.randn(64, 48)
    approx, error = low_rank_approximation(DenseDelta(weight), energy=0.99)
    assert isinstance(approx, LowRankDelta) and approx.up.shape[1] <= 8
    measured = float((approx.dense().weight - weight).norm() / weight.norm())
    assert measured == pytest.approx(error, rel=1e-3) and measured < 0.1


def test_omega_out_of_range_is_refused():
    with pytest.raises(ValueError, match="omega"):
        WeakBranch(1.5, {})


@pytest.mark.parametrize("exact", [False, True])
def test_lowvram_mode_keeps_no_device_copies_and_gives_the_same_rows(exact):
    torch.manual_seed(6)
    base = nn.Linear(8, 6)
    tuned = _tuned(base)
    x, mask = _input(base), torch.tensor([True, False, True, False])
    outs = []
    for keep in (True, False):
        delta = _dense(base, tuned)
        branch = WeakBranch(0.3, {tuned: [delta]}, exact_weights=exact, keep_on_device=keep)
        with torch.no_grad(), branch:
            branch.mask = mask
            outs.append(tuned(x))
            cached = branch.cache_bytes() > 0 or delta._placed.key != ()
        assert cached == keep
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("spec", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(3, 2), padding=(1, 0), dilation=(2, 1)), dict(kernel_size=2)])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_small_convolutions_of_the_weak_rows_equal_conv2d(spec, rows, bias):
    """The exact path's weak rows of a conv over few pixels run as unfold + matmul: same values as conv2d."""
    from pg_ext.deltas import _small_conv, layer_op, weak_rows_op
    torch.manual_seed(7)
    layer = nn.Conv2d(6, 5, bias=bias, **spec)
    x = torch.randn(rows, 6, 5, 7)
    assert _small_conv(layer, x)
    weight, b = torch.randn_like(layer.weight), None if layer.bias is None else torch.randn_like(layer.bias)
    torch.testing.assert_close(weak_rows_op(layer, x, weight, b), layer_op(layer, x, weight, b), rtol=1e-5, atol=1e-5)
    assert not _small_conv(layer, torch.randn(1, 6, 24, 24)) and not _small_conv(nn.Conv2d(6, 5, 1), x)
