"""PG on the miniature through pg_ext's one-call mechanism matches CFG at ω = 1 and a two-model reference."""
import pytest
import torch

from pg_ext.branch import WeakBranch
from pg_ext.router import UNetRowRouter
from pg_mini import data
from pg_mini.guide import Guidance, encode, sample, weak_model

PROMPTS = [data.subject_prompt("red", "left"), data.subject_prompt("blue", "right"), data.prompt("circle", "green")]


def _inputs(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(PROMPTS)
    x = torch.randn((n, 3, 32, 32), generator=gen)
    t = torch.rand(n, generator=gen)
    return x, t, encode(model.text, PROMPTS), encode(model.text, [""]).expand(n, -1, -1)


def test_omega_one_is_cfg_exactly(model):
    cfg = sample(model, PROMPTS, Guidance("cfg", 4.0), seed=3, steps=4)
    pg = sample(model, PROMPTS, Guidance("pg", 4.0, 1.0), seed=3, steps=4)
    assert torch.equal(cfg, pg)


@pytest.mark.parametrize("omega", [0.0, 0.3, 0.75])
def test_one_batched_call_equals_two_models(model, omega):
    x, t, cond, uncond = _inputs(model)
    n = x.shape[0]
    with torch.no_grad():
        with UNetRowRouter(model.tuned, WeakBranch(omega, model.deltas, exact_weights=model.dense)) as router:
            router.begin_step(cond, uncond)
            out = model.tuned(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([cond, uncond]))
        ref_cond = model.tuned(x, t, cond)
        ref_weak = weak_model(model, omega)(x, t, uncond)
    torch.testing.assert_close(out[:n], ref_cond, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[n:], ref_weak, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ref_weak, model.tuned(x, t, uncond), atol=1e-4)  # the weak branch really differs


def test_pg_sampler_equals_two_model_sampler(model):
    omega, scale, steps = 0.3, 3.0, 3
    got = sample(model, PROMPTS, Guidance("pg", scale, omega), seed=5, steps=steps)
    weak = weak_model(model, omega)
    cond, uncond = encode(model.text, PROMPTS), encode(model.text, [""]).expand(len(PROMPTS), -1, -1)

    def predict(x, t):
        v_cond, v_weak = model.tuned(x, t, cond), weak(x, t, uncond)
        return v_weak + scale * (v_cond - v_weak)

    from pg_mini.diffusion import ddim_sample
    noise = torch.randn((len(PROMPTS), 3, 32, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ddim_sample(predict, noise, steps)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_autoguidance_weak_rows_are_the_base_on_the_same_prompt(model):
    x, t, cond, _ = _inputs(model, seed=1)
    n = x.shape[0]
    with torch.no_grad():
        with UNetRowRouter(model.tuned, WeakBranch(0.0, model.deltas, exact_weights=model.dense)) as router:
            router.begin_step(cond, cond)
            out = model.tuned(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([cond, cond]))
        torch.testing.assert_close(out[:n], model.tuned(x, t, cond), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[n:], model.base(x, t, cond), atol=1e-5, rtol=1e-4)


def test_sampling_leaves_no_hooks(model):
    sample(model, PROMPTS[:1], Guidance("pg", 3.0, 0.2), steps=2)
    for module in model.tuned.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("guidance", [
    Guidance("pg", 3.0, 1.0, omega_end=0.0),            # falling ramp: ω 1, 0.75, 0.5, 0.25
    Guidance("pg", 3.0, 0.0, omega_end=1.0),            # rising ramp
    Guidance("pg", 3.0, 0.2, start=0.25, end=0.75),     # ω = 0.2 in a band of the steps, plain CFG outside
    Guidance("pg", 3.0, auto=True),                     # auto: ω 1, 1, 0, 0
    Guidance("pg", 3.0, ramp=(0.25, 0.75)),             # a candidate for auto: ω 1, 1, 0.5, 0
])
def test_scheduled_pg_equals_a_sampler_that_applies_each_steps_omega(model, guidance):
    steps, scale = 4, guidance.scale
    got = sample(model, PROMPTS, guidance, seed=7, steps=steps)
    cond, uncond = encode(model.text, PROMPTS), encode(model.text, [""]).expand(len(PROMPTS), -1, -1)
    omegas = [guidance.schedule.omega_at(i / steps) for i in range(steps)]
    weak_models = {w: weak_model(model, w) for w in set(omegas)}  # ω = 1: θ' itself, i.e. plain CFG
    step = iter(omegas)

    def predict(x, t):
        weak = weak_models[next(step)]
        v_cond, v_weak = model.tuned(x, t, cond), weak(x, t, uncond)
        return v_weak + scale * (v_cond - v_weak)

    from pg_mini.diffusion import ddim_sample
    noise = torch.randn((len(PROMPTS), 3, 32, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ddim_sample(predict, noise, steps)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    constant = sample(model, PROMPTS, Guidance("pg", scale, guidance.omega), seed=7, steps=steps)
    assert (got - constant).abs().max() > 1e-2  # the schedule changes the image


def test_auto_is_the_late_band_bit_for_bit(model):
    """The measurement's 'PG auto' rows are the late band's (ω = 0 from half the steps): same images."""
    auto = sample(model, PROMPTS, Guidance("pg", 4.0, auto=True), seed=3, steps=6)
    late = sample(model, PROMPTS, Guidance("pg", 4.0, 0.0, start=0.5), seed=3, steps=6)
    assert torch.equal(auto, late)
    assert Guidance("pg", 4.0, auto=True).label == "PG auto s=4"


def test_constant_schedule_is_the_loop_before_schedules_bit_for_bit(model):
    """The sampler as it was before schedules: one WeakBranch at ω, begin_step before every call."""
    omega, scale, steps = 0.4, 3.0, 3
    got = sample(model, PROMPTS, Guidance("pg", scale, omega), seed=2, steps=steps)
    n = len(PROMPTS)
    cond, uncond = encode(model.text, PROMPTS), encode(model.text, [""]).expand(n, -1, -1)
    context = torch.cat([cond, uncond])
    router = UNetRowRouter(model.tuned, WeakBranch(omega, model.deltas, exact_weights=model.dense))

    def predict(x, t):
        router.begin_step(cond, uncond)
        out = model.tuned(torch.cat([x, x]), torch.cat([t, t]), context=context)
        return out[n:] + scale * (out[:n] - out[n:])

    from pg_mini.diffusion import ddim_sample
    noise = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), router:
        want = ddim_sample(predict, noise, steps)
    assert torch.equal(got, want)
