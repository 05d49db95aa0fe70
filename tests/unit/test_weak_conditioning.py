"""The router puts the weak conditioning into the weak rows it found, and only there (issue 17 item 7).

A step whose rows cannot be found (another extension rewrote the conditioning) must be plain CFG, so the
host's uncond is never replaced before the call: the weak rows get their θ_ω text inside it.
"""
import torch
from torch import nn

from pg_ext.branch import WeakBranch
from pg_ext.router import UNetRowRouter


class Recorder(nn.Module):
    """A UNet-shaped module that records the conditioning it was called with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, timesteps=None, context=None, y=None):
        self.seen.append((context.clone(), None if y is None else y.clone()))
        return x


def _router(unet):
    return UNetRowRouter(unet, WeakBranch(0.3, {}))


def test_each_weak_row_gets_the_weak_conditioning_of_the_uncond_row_it_equals():
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)  # per-image negatives
    weak, weak_y = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 5, generator=gen)
    y = torch.randn(4, 5, generator=gen)
    unet = Recorder()
    with _router(unet) as router:
        router.begin_step(cond, uncond, weak_context=weak, weak_y=weak_y)
        context = torch.stack([cond[0], uncond[1], cond[1], uncond[0]])  # chunks of one cond + one uncond row
        unet(torch.zeros(4, 1), torch.zeros(4), context=context, y=y)
    seen, seen_y = unet.seen[0]
    torch.testing.assert_close(seen, torch.stack([cond[0], weak[1], cond[1], weak[0]]))
    torch.testing.assert_close(seen_y, torch.stack([y[0], weak_y[1], y[2], weak_y[0]]))
    assert router.steps_routed == 1 and router.steps_missed == 0


def test_padding_after_the_weak_tokens_is_the_hosts_and_positional_context_is_replaced_in_place():
    gen = torch.Generator().manual_seed(1)
    cond, uncond, weak = (torch.randn(1, 4, 3, generator=gen) for _ in range(3))
    padding = torch.randn(1, 4, 3, generator=gen)  # the host padded the uncond to the cond's 8 tokens
    unet = Recorder()
    with _router(unet) as router:
        router.begin_step(torch.cat([cond, cond], 1), uncond, weak_context=weak)
        context = torch.cat([torch.cat([cond, cond], 1), torch.cat([uncond, padding], 1)])
        unet(torch.zeros(2, 1), torch.zeros(2), context)
    torch.testing.assert_close(unet.seen[0][0][1], torch.cat([weak, padding], 1)[0])


def test_rows_that_cannot_be_found_keep_the_hosts_conditioning():
    gen = torch.Generator().manual_seed(2)
    cond, uncond, weak = (torch.randn(1, 4, 3, generator=gen) for _ in range(3))
    unet = Recorder()
    with _router(unet) as router:
        router.begin_step(cond, uncond, weak_context=weak)
        context = torch.cat([cond, uncond]) + 0.01  # rewritten by another extension after PG saw the step
        unet(torch.zeros(2, 1), torch.zeros(2), context)
        assert router.pending() == (0, 1) and router.pending_mixed() == 0
    torch.testing.assert_close(unet.seen[0][0], context)
    assert router.steps_missed == 1 and router.steps_mixed == 0  # plain CFG: not mixed


def test_a_missed_step_whose_uncond_the_host_already_replaced_is_counted_as_mixed():
    gen = torch.Generator().manual_seed(3)
    cond, weak = (torch.randn(1, 4, 3, generator=gen) for _ in range(2))
    unet = Recorder()
    with _router(unet) as router:
        router.begin_step(cond, weak, uncond_is_weak=True)
        unet(torch.zeros(2, 1), torch.zeros(2), torch.cat([cond, weak]) + 0.01)
        assert router.pending_mixed() == 1
        router.begin_step(None, None)
    assert router.steps_missed == 1 and router.steps_mixed == 1
