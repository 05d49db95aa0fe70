"""ω over the steps: the schedule's math, its validation, and the WeakBranch taking a new ω per step."""
import copy

import pytest
import torch
from torch import nn

import pg_ext.branch
from pg_ext.branch import WeakBranch
from pg_ext.config import Settings, SettingsError
from pg_ext.deltas import DenseDelta
from pg_ext.schedule import OmegaSchedule, ramp_down


# -- schedule math ----------------------------------------------------------------------------------

def test_constant_is_omega_inside_the_range_and_plain_cfg_outside():
    s = OmegaSchedule("constant", 0.3, 0.9, start=0.2, end=0.6)
    assert [s.omega_at(f) for f in (0.0, 0.19, 0.2, 0.4, 0.59, 0.6, 0.9)] == [1.0, 1.0, 0.3, 0.3, 0.3, 1.0, 1.0]
    assert s.lowest() == 0.3 and s.middle() == 0.3  # omega_end plays no part in 'constant'


def test_linear_runs_from_omega_at_start_to_omega_end_at_end():
    s = OmegaSchedule("linear", 1.0, 0.0)
    assert [s.omega_at(f) for f in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    band = OmegaSchedule("linear", 0.2, 0.6, start=0.5, end=0.75)
    assert band.omega_at(0.49) == 1.0 and band.omega_at(0.75) == 1.0  # outside: plain CFG
    assert [band.omega_at(f) for f in (0.5, 0.5625, 0.625)] == pytest.approx([0.2, 0.3, 0.4])
    assert band.lowest() == 0.2 and band.middle() == pytest.approx(0.4)
    assert OmegaSchedule("linear", 0.9, 0.1).lowest() == 0.1


def test_auto_is_plain_cfg_for_the_first_half_then_omega_zero():
    s = OmegaSchedule("auto", omega=0.7, omega_end=0.9)  # ω and omega_end play no part
    assert [s.omega_at(f) for f in (0.0, 0.25, 0.49, 0.5, 0.75, 1.0)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert s.lowest() == 0.0 and s.middle() == 0.0
    # inside [start, end] only; a range that ends before half the run never guides
    assert OmegaSchedule("auto", start=0.6).omega_at(0.55) == 1.0 and OmegaSchedule("auto", start=0.6).lowest() == 0.0
    assert OmegaSchedule("auto", end=0.5).lowest() == 1.0
    assert not Settings(enabled=True, schedule="auto", end=0.5).active()
    assert Settings(enabled=True, schedule="auto", omega=1.0).active()  # ω = 1 does not turn auto off
    late = OmegaSchedule("constant", omega=0.0, start=0.5)  # the measured late band
    assert all(s.omega_at(i / 20) == late.omega_at(i / 20) for i in range(21))


def test_ramp_down_is_linear_between_and_a_step_when_equal():
    assert [ramp_down(f, 0.25, 0.75) for f in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    assert [ramp_down(f, 0.5, 0.5) for f in (0.49, 0.5)] == [1.0, 0.0]


def test_settings_use_their_schedule():
    s = Settings(enabled=True, omega=0.0, schedule="linear", omega_end=1.0)
    assert s.omega_at(0.5) == pytest.approx(0.5) and s.active()
    assert not Settings(enabled=True, omega=1.0, schedule="linear", omega_end=1.0).active()
    assert Settings(enabled=True, omega=1.0, schedule="linear", omega_end=0.4).active()  # ramps down from CFG
    assert not Settings(enabled=True, omega=1.0, schedule="constant", omega_end=0.0).active()


# -- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, field, quoted", [
    ({"schedule": "cosine"}, "schedule", "'cosine'"),
    ({"schedule": None}, "schedule", "None"),
    ({"omega_end": 1.2}, "omega_end", "1.2"),
    ({"omega_end": float("nan")}, "omega_end", "nan"),
    ({"omega_end": "half"}, "omega_end", "'half'"),
])
def test_bad_values_name_the_field_and_quote_the_value(values, field, quoted):
    with pytest.raises(SettingsError) as err:
        Settings.from_values({"enabled": True, **values})
    assert err.value.field == field
    assert str(err.value).startswith(f"Personalization Guidance: setting '{field}' ") and str(err.value).endswith(f"got {quoted}")


def test_schedule_is_read_case_and_space_insensitively_and_positionally():
    assert Settings.from_values({"schedule": " Linear "}).schedule == "linear"
    assert Settings.from_values({"schedule": "AUTO"}).schedule == "auto"
    s = Settings.from_positional([True, 0.2, "", "negative", 0.0, 1.0, True, "None", "exact", "linear", 0.8])
    assert (s.schedule, s.omega_end) == ("linear", 0.8)
    with pytest.raises(SettingsError, match="'args'"):
        Settings.from_positional([True, 0.2, "", "negative", 0.0, 1.0, True, "None", "exact", "linear", 0.8, 1])


def test_infotext_has_schedule_keys_only_when_not_constant():
    constant = Settings(enabled=True, omega=0.3, omega_end=0.9)
    assert "PG schedule" not in constant.infotext() and "PG omega end" not in constant.infotext()
    assert constant.infotext() == {"PG omega": 0.3, "PG weak prompt": "negative"}  # what it was before schedules
    linear = Settings(enabled=True, omega=0.3, schedule="linear", omega_end=0.9)
    assert linear.infotext()["PG schedule"] == "linear" and linear.infotext()["PG omega end"] == 0.9
    assert Settings.from_infotext({k: str(v) for k, v in linear.infotext().items()}) == linear
    assert Settings.from_infotext({"PG omega": "0.3"}).schedule == "constant"
    auto = Settings(enabled=True, omega=0.3, schedule="auto")
    assert auto.infotext() == {"PG omega": 0.3, "PG weak prompt": "negative", "PG schedule": "auto"}
    assert Settings.from_infotext({k: str(v) for k, v in auto.infotext().items()}) == auto


# -- per-step ω on the weak branch ------------------------------------------------------------------

def _pair(seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(8, 6)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    delta = DenseDelta(tuned.weight.detach() - base.weight.detach(), tuned.bias.detach() - base.bias.detach())
    return base, tuned, delta


@pytest.mark.parametrize("exact", [False, True])
def test_set_omega_per_step_equals_a_branch_built_at_that_omega(exact):
    base, tuned, delta = _pair()
    x = torch.randn(4, 5, 8)
    mask = torch.tensor([False, False, True, True])
    with torch.no_grad():
        stepped = WeakBranch(0.0, {tuned: [delta]}, exact_weights=exact)
        with stepped:
            got = []
            for omega in (0.0, 0.6, 0.6, 0.25, 1.0):
                stepped.set_omega(omega)
                stepped.mask = mask
                got.append(tuned(x))
        for omega, out in zip((0.0, 0.6, 0.6, 0.25, 1.0), got):
            fresh = WeakBranch(omega, {tuned: [delta]}, exact_weights=exact)
            with fresh:
                fresh.mask = mask
                want = tuned(x)
            assert torch.equal(out, want), omega  # bit for bit: a new ω is the same computation as a new branch
    assert torch.equal(got[-1], tuned(x))  # ω = 1: the layer untouched


def test_exact_weights_are_formed_once_per_distinct_step_omega(monkeypatch):
    base, tuned, delta = _pair(1)
    formed = []
    real_minus = pg_ext.branch._minus
    monkeypatch.setattr(pg_ext.branch, "_minus", lambda *a, **k: formed.append(a[2]) or real_minus(*a, **k))
    x = torch.randn(4, 5, 8)
    branch = WeakBranch(0.2, {tuned: [delta]}, exact_weights=True)
    with torch.no_grad(), branch:
        for omega in (0.2, 0.2, 0.2, 1.0, 0.2, 0.5, 0.5):  # a constant stretch, a plain-CFG step, a ramp's steps
            branch.set_omega(omega)
            for _ in range(2):  # two UNet calls in a step (e.g. batch cond/uncond off)
                branch.mask = torch.tensor([False, True, False, True])
                tuned(x)
    # weight and bias formed at ω = 0.2, then at 0.5; the ω = 1 step skips the layer (0.2 stays cached)
    assert formed == pytest.approx([0.8, 0.8, 0.5, 0.5])


def test_branch_built_at_one_never_hooks():
    _, tuned, delta = _pair()
    with WeakBranch(1.0, {tuned: [delta]}):
        assert not tuned._forward_hooks and not tuned._forward_pre_hooks
