"""Rows marked by the host (ComfyUI's `cond_or_uncond`): weak rows from chunk marks, no device syncs per layer."""
import torch

from pg_ext.branch import WeakBranch
from pg_ext.router import MarkedRowRouter
from pg_ext.rows import WeakRows

from test_host_syncs import SyncCounter, _lora_deltas
from tiny_unet import StackedTinyUNet


def test_chunk_marks_give_the_rows_of_the_marked_chunks():
    assert WeakRows.from_chunk_marks([1, 0], 4).weak == (0, 1)
    assert WeakRows.from_chunk_marks([0, 1, 0], 6).weak == (2, 3)
    assert WeakRows.from_chunk_marks([0, 0], 4).weak == ()
    assert WeakRows.from_chunk_marks([1, 0], 5) is None  # rows do not split into the chunks: unknown
    assert WeakRows.from_chunk_marks([], 4) is None


def _marks_of(args, kwargs):
    marks = (kwargs.get("transformer_options") or {}).get("cond_or_uncond")
    return None if marks is None else WeakRows.from_chunk_marks(marks, args[0].shape[0])


def _syncs(depth, marks):
    torch.manual_seed(0)
    unet = StackedTinyUNet(depth).eval()
    deltas = _lora_deltas(unet)
    gen = torch.Generator().manual_seed(1)
    x, t, context = torch.randn(4, 4, 8, 8, generator=gen), torch.tensor([500] * 4), torch.randn(4, 5, 12, generator=gen)
    options = {"cond_or_uncond": marks}
    with torch.no_grad(), SyncCounter() as plain:
        unet(x, t, context=context, transformer_options=options)
    router = MarkedRowRouter(unet, WeakBranch(0.3, deltas), _marks_of)
    with router, torch.no_grad():
        router.begin_step(context[:2], context[2:])
        with SyncCounter() as hooked:
            out = unet(x, t, context=context, transformer_options=options)
        assert router.pending() == (1, 0)
    return hooked.count - plain.count, len(deltas), out


def test_marked_router_makes_no_device_sync_at_all():
    small, small_layers, _ = _syncs(0, [1, 0])
    large, large_layers, _ = _syncs(6, [0, 1])
    assert large_layers > 3 * small_layers
    assert small == 0 and large == 0  # the marks are host ints: not even one read per call


def test_marked_router_changes_only_the_weak_rows_and_counts_unmarked_calls():
    torch.manual_seed(0)
    unet = StackedTinyUNet(1).eval()
    gen = torch.Generator().manual_seed(1)
    x, t, context = torch.randn(4, 4, 8, 8, generator=gen), torch.tensor([500] * 4), torch.randn(4, 5, 12, generator=gen)
    with torch.no_grad():
        plain = unet(x, t, context=context)
        router = MarkedRowRouter(unet, WeakBranch(0.3, _lora_deltas(unet)), _marks_of)
        with router:
            router.begin_step(context[:2], context[2:])
            out = unet(x, t, context=context, transformer_options={"cond_or_uncond": [0, 1]})
            router.begin_step(context[:2], context[2:])
            unet(x, t, context=context)  # a wrapper dropped the marks
            router.begin_step(None, None)
    assert torch.equal(out[:2], plain[:2]) and (out[2:] - plain[2:]).abs().max() > 1e-4
    assert (router.steps_routed, router.steps_missed) == (1, 1)


def test_a_step_with_one_unreadable_call_is_reported_not_counted_as_guided():
    """Split calls of one step: one corrected, one unreadable (its uncond rows ran θ'): neither PG nor CFG."""
    torch.manual_seed(0)
    unet = StackedTinyUNet(1).eval()
    gen = torch.Generator().manual_seed(1)
    x, t, context = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([500] * 2), torch.randn(2, 5, 12, generator=gen)
    with torch.no_grad():
        router = MarkedRowRouter(unet, WeakBranch(0.3, _lora_deltas(unet)), _marks_of)
        with router:
            router.begin_step(context[:1], context[1:])
            unet(x, t, context=context, transformer_options={"cond_or_uncond": [0, 1]})
            unet(x, t, context=context)  # the step's second call lost its marks
            router.begin_step(None, None)
    assert (router.steps_routed, router.steps_missed, router.steps_mixed) == (0, 1, 1)
