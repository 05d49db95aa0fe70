"""PG's per-layer hooks never wait for the device: device->host syncs per UNet call are a constant.

On a GPU every `.nonzero()`, `.item()`, `int(tensor)` or `bool(tensor)` stalls the queue; SDXL has
hundreds of hooked layers per call. Counted here on CPU with a TorchDispatchMode that sees every aten op:
the ops that force a device->host copy, in a hooked call minus the same call without PG, must not grow
with the number of hooked layers.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pg_ext.branch import WeakBranch
from pg_ext.checkpoint import checkpoint_deltas
from pg_ext.deltas import LowRankDelta
from pg_ext.router import UNetRowRouter

from tiny_unet import StackedTinyUNet, perturbed

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default, aten.equal.default,
            aten.masked_select.default, aten.unique_consecutive.default, aten._unique2.default,
            aten.repeat_interleave.Tensor, aten.nonzero_static.default}
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _bool_indices(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts aten ops whose result size or value has to be read back from the device."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS or (func in BOOL_INDEXED and _bool_indices(args)):
            self.count += 1
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _lora_deltas(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            out[layer] = [LowRankDelta(torch.randn(2, layer.in_features, generator=gen),
                                       torch.randn(layer.out_features, 2, generator=gen), 0.1)]
        elif isinstance(layer, torch.nn.Conv2d):
            out[layer] = [LowRankDelta(torch.randn(2, layer.in_channels, *layer.kernel_size, generator=gen),
                                       torch.randn(layer.out_channels, 2, 1, 1, generator=gen), 0.1)]
    return out


def _syncs_per_call(depth: int, kind: str, layout: str, calls: int = 2) -> tuple[int, int]:
    """(syncs PG adds per UNet call, hooked layers) for a model with `depth` extra blocks."""
    torch.manual_seed(0)
    base = StackedTinyUNet(depth).eval()
    if kind == "dreambooth":
        tuned = perturbed(base, 0.05).eval()
        deltas, exact = checkpoint_deltas(tuned, dict(base.named_parameters())).deltas, True
    else:
        tuned, deltas, exact = base, _lora_deltas(base), False
    gen = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 5, 12, generator=gen)
    x, t = torch.randn(4, 4, 8, 8, generator=gen), torch.tensor([500] * 4)
    context = torch.cat([cond, uncond]) if layout == "uncond_last" else torch.stack([cond[0], uncond[0], cond[1], uncond[1]])

    def run(counter):
        with torch.no_grad(), counter:
            for _ in range(calls):
                tuned(x, t, context=context)
        return counter.count

    plain = run(SyncCounter())
    router = UNetRowRouter(tuned, WeakBranch(0.3, deltas, exact_weights=exact))
    with router:
        # with the weak conditioning put into the weak rows by the router (a text-encoder LoRA, A1111)
        router.begin_step(cond, uncond, weak_context=uncond + 0.5)
        hooked = run(SyncCounter())
        assert router.step.seen == 4 * calls  # the rows really were routed
    assert (hooked - plain) % calls == 0
    return (hooked - plain) // calls, len(deltas)


@pytest.mark.parametrize("kind", ["dreambooth", "lora"])
@pytest.mark.parametrize("layout", ["uncond_last", "interleaved"])
def test_syncs_per_unet_call_do_not_grow_with_hooked_layers(kind, layout):
    small, small_layers = _syncs_per_call(0, kind, layout)
    large, large_layers = _syncs_per_call(6, kind, layout)
    assert large_layers > 3 * small_layers
    assert small == large, f"{small} syncs with {small_layers} hooked layers, {large} with {large_layers}"
    assert large <= 2  # reading the call's weak rows to the host once


def test_counter_sees_the_syncs_a_hook_would_make():
    """The counter is not blind: a per-layer .nonzero(), int() or bool mask index is counted."""
    mask, x = torch.tensor([False, True]), torch.randn(2, 3)
    with SyncCounter() as counter:
        mask.nonzero()
        int(mask.long()[0])
        bool(mask.all())
        x[mask]
    assert counter.count == 4
