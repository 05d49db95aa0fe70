"""ω over the steps through the entry script on our A1111 double: the per-step ω that on_cfg_denoiser decides
from (sampling_step, total_sampling_steps) reaches the hooks, and equals a slow reference that re-merges the
LoRA at that step's ω; a constant schedule is today's PG bit for bit."""
import pytest
import torch

from modules import infotext_utils, processing, scripts
from pg_ext.schedule import OmegaSchedule
from pg_host import FIELDS, SlowReference, assert_no_hooks, images, load_pg, make_p, pg_script, run as _run

STEPS = 4  # the double's default


@pytest.fixture
def runner(host):
    return load_pg()


def run(runner, pg=None, **kw):
    return _run(runner, pg, **kw)


@pytest.mark.parametrize("values", [
    dict(omega=0.0, omega_end=1.0),                         # rising: ω 0, 0, 0.25, 0.5 (fractions 0, 0, 0.25, 0.5)
    dict(omega=1.0, omega_end=0.0),                         # falling: the first two steps are plain CFG
    dict(omega=1.0, omega_end=0.0, start=0.25, end=0.75),   # a band: only the last step is guided (ω 0.5)
])
def test_linear_schedule_equals_slow_reference_at_each_steps_omega(runner, values):
    settings = {"enabled": True, "schedule": "linear", **values}
    schedule = OmegaSchedule("linear", values["omega"], values["omega_end"], values.get("start", 0.0),
                             values.get("end", 1.0))
    pg, _ = run(runner, [settings])
    # the text encoder's weak conditioning is encoded once per pass at the ω halfway through the range
    with SlowReference(schedule.omega_at, text_omega=schedule.middle()):
        ref, _ = run(runner)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    constant, _ = run(runner, [{"enabled": True, "omega": values["omega"], "start": values.get("start", 0.0),
                                "end": values.get("end", 1.0)}])
    off, _ = run(runner)
    assert (images(pg) - images(constant)).abs().max() > 1e-3  # the schedule is not the constant ω
    assert (images(pg) - images(off)).abs().max() > 1e-3
    assert "PG schedule: linear" in pg.infotexts[0] and f"PG omega end: {float(values['omega_end'])}" in pg.infotexts[0]
    assert_no_hooks()


def test_each_step_sets_the_schedules_omega_on_the_branch(runner, monkeypatch):
    from pg_ext.branch import WeakBranch

    seen = []
    original = WeakBranch.set_omega

    def spy(self, omega):
        seen.append(omega)
        return original(self, omega)

    monkeypatch.setattr(WeakBranch, "set_omega", spy)
    run(runner, [{"enabled": True, "omega": 0.2, "schedule": "linear", "omega_end": 0.6}])
    steps = seen[-STEPS:]  # the first entries are the branches' constructors (text at the middle, UNet at the lowest ω)
    # A1111 sets sampling_step after each step, so steps 0 and 1 both see 0: fractions 0, 0, 0.25, 0.5
    assert seen[:2] == pytest.approx([0.4, 0.2]) and steps == pytest.approx([0.2, 0.2, 0.3, 0.4])


def test_constant_schedule_is_todays_pg_bit_for_bit(runner):
    today, _ = run(runner, [True, 0.3, "", "negative", 0.25, 1.0])
    explicit, _ = run(runner, [{"enabled": True, "omega": 0.3, "start": 0.25, "schedule": "constant",
                                "omega_end": 0.9}])
    assert torch.equal(images(today), images(explicit))
    assert today.infotexts[0] == explicit.infotexts[0]
    assert "PG schedule" not in today.infotexts[0] and "PG omega end" not in today.infotexts[0]


def test_schedule_that_never_leaves_one_is_plain_cfg_and_hooks_nothing(runner):
    off, _ = run(runner)
    flat, _ = run(runner, [{"enabled": True, "omega": 1.0, "schedule": "linear", "omega_end": 1.0}])
    assert torch.equal(images(off), images(flat))
    assert_no_hooks()


@pytest.mark.parametrize("values, field, shown", [
    ({"schedule": "cosine"}, "schedule", "'cosine'"),
    ({"schedule": 3}, "schedule", "3"),
    ({"schedule": "linear", "omega_end": 1.5}, "omega_end", "1.5"),
    ({"schedule": "linear", "omega_end": "lots"}, "omega_end", "'lots'"),
])
def test_bad_schedule_values_are_http_422_naming_the_field_and_value(runner, values, field, shown):
    from fastapi import HTTPException

    p = make_p(runner, [{"enabled": True, **values}])
    p.is_api = True
    with pytest.raises(HTTPException) as err:
        processing.process_images(p)
    assert err.value.status_code == 422
    assert f"'{field}'" in err.value.detail and f"got {shown}" in err.value.detail
    assert_no_hooks()


def test_positional_schedule_arguments_follow_the_old_ones(runner):
    by_dict, _ = run(runner, [{"enabled": True, "omega": 0.1, "schedule": "linear", "omega_end": 0.7}])
    by_position, _ = run(runner, [True, 0.1, "", "negative", 0.0, 1.0, True, "None", "exact", "linear", 0.7])
    assert torch.equal(images(by_dict), images(by_position))


def test_paste_restores_the_schedule_and_an_old_infotext_gives_constant(runner):
    pg, _ = run(runner, [{"enabled": True, "omega": 0.2, "schedule": "linear", "omega_end": 0.65}])
    script = pg_script(runner)
    by_field = dict(zip(FIELDS, (v.get("value") for v in infotext_utils.paste(pg.infotexts[0], script.infotext_fields))))
    assert by_field["schedule"] == "linear" and float(by_field["omega_end"]) == 0.65
    old = "a cat\nSteps: 4, Sampler: Euler, PG omega: 0.4, PG weak prompt: negative"
    by_field = dict(zip(FIELDS, (v.get("value") for v in infotext_utils.paste(old, script.infotext_fields))))
    assert by_field["schedule"] == "constant"


def test_xyz_schedule_axes_apply_per_cell_and_refuse_bad_values(runner):
    xyz_grid = next(d.module for d in scripts.scripts_data if d.path.endswith("xyz_grid.py"))
    axes = {o.label: o for o in xyz_grid.axis_options if o.label.startswith("[PG]")}
    schedule_axis, end_axis = axes["[PG] ω schedule"], axes["[PG] ω at the end"]
    assert schedule_axis.choices() == ["constant", "linear", "auto"]
    p = make_p(runner, [{"enabled": True, "omega": 0.0, "omega_end": 1.0}], prompt="sks <lora:subject:1>")
    with pytest.raises(Exception, match="'schedule'"):
        schedule_axis.confirm(p, ["linear", "zigzag"])
    with pytest.raises(Exception, match="'omega_end'"):
        end_axis.confirm(p, [0.5, -1.0])
    cells = xyz_grid.run_grid(p, schedule_axis, ["constant", "linear"])
    assert "PG schedule" not in cells[0].infotexts[0] and "PG schedule: linear" in cells[1].infotexts[0]
    assert not torch.equal(images(cells[0]), images(cells[1]))
    assert end_axis.format_value(p, end_axis, 0.25) == "PG ω at the end: 0.25"


# -- auto (issue 19 item 2) --------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [4, 8])
def test_auto_equals_slow_reference_at_each_steps_omega(runner, steps):
    """auto: plain CFG while less than half the run is done, ω = 0 after (the reference's own formula here,
    not pg_ext's: A1111's step counter reads 0, 0, 1/n, 2/n, ...)."""
    pg, _ = run(runner, [{"enabled": True, "schedule": "auto", "omega": 0.7, "omega_end": 0.9}], steps=steps)
    with SlowReference(lambda fraction: 0.0 if fraction >= 0.5 else 1.0, text_omega=0.0):
        ref, _ = run(runner, steps=steps)
    torch.testing.assert_close(images(pg), images(ref), rtol=1e-4, atol=1e-4)
    off, _ = run(runner, steps=steps)
    assert (images(pg) - images(off)).abs().max() > 1e-3
    assert "PG schedule: auto" in pg.infotexts[0] and "PG omega end" not in pg.infotexts[0]
    assert_no_hooks()


def test_auto_ignores_omega_and_omega_end_and_is_the_late_band(runner):
    a, _ = run(runner, [{"enabled": True, "schedule": "auto", "omega": 0.7, "omega_end": 0.9}], steps=8)
    b, _ = run(runner, [{"enabled": True, "schedule": "auto", "omega": 1.0, "omega_end": 0.0}], steps=8)
    late, _ = run(runner, [{"enabled": True, "omega": 0.0, "start": 0.5}], steps=8)
    assert torch.equal(images(a), images(b)) and torch.equal(images(a), images(late))


def test_auto_steps_set_one_then_zero_on_the_branch(runner, monkeypatch):
    from pg_ext.branch import WeakBranch

    seen = []
    original = WeakBranch.set_omega
    monkeypatch.setattr(WeakBranch, "set_omega", lambda self, omega: seen.append(omega) or original(self, omega))
    run(runner, [{"enabled": True, "schedule": "auto"}], steps=8)
    # constructors (text at the middle, UNet at the lowest ω: both 0), then only the guided steps set ω:
    # the step counter reads 0, 0, 1, ..., 6 of 8: the three steps at 4/8, 5/8 and 6/8 are ω = 0
    assert seen[:2] == [0.0, 0.0] and seen[2:] == [0.0] * 3


def test_paste_and_positional_restore_auto(runner):
    pg, _ = run(runner, [{"enabled": True, "schedule": "auto"}])
    script = pg_script(runner)
    by_field = dict(zip(FIELDS, (v.get("value") for v in infotext_utils.paste(pg.infotexts[0], script.infotext_fields))))
    assert by_field["schedule"] == "auto"
    by_position, _ = run(runner, [True, 0.5, "", "negative", 0.0, 1.0, True, "None", "exact", "auto", 0.0])
    assert torch.equal(images(pg), images(by_position))


def test_xyz_auto_cell(runner):
    xyz_grid = next(d.module for d in scripts.scripts_data if d.path.endswith("xyz_grid.py"))
    axis = next(o for o in xyz_grid.axis_options if o.label == "[PG] ω schedule")
    p = make_p(runner, [{"enabled": True, "omega": 0.0, "start": 0.5}], steps=8)
    cells = xyz_grid.run_grid(p, axis, ["constant", "auto"])
    assert "PG schedule: auto" in cells[1].infotexts[0]
    assert torch.equal(images(cells[0]), images(cells[1]))  # the same steps, the same ω
