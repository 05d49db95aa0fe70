"""ω over the steps and the automatic ω (issue 19) in the real WebUI: through the API (dict and positional),
the infotext paste and X/Y/Z, each equal to the slow reference that applies the schedule's ω at each step
(tests/webui/reference_ext, its `schedule` argument: ω from the host's step counter, a step at ω = 1 left
to the host)."""
from __future__ import annotations

import json

import pytest

import webui_client as wc
from test_pg_webui import MATCH_MAX, MATCH_MEAN, _xyz_payload, assert_equal

STEPS = 8  # the host's step counter reads 0, 0, 1, ..., 6 of 8: auto guides the steps at 4/8, 5/8, 6/8 at ω = 0
CFG = 12   # the guided steps are the low-noise ones: a higher scale makes their change larger than the tolerance
CHANGED_MEAN = 0.25  # ω only in the last steps changes less than a constant ω (test_pg_webui: 1.0) ...
CHANGED_MAX = 3.0    # ... but somewhere by more than the match tolerance (measured: auto max 3-4/255, mean 0.5-0.6/255)


def request(**extra):
    return wc.base_request(steps=STEPS, cfg_scale=CFG, **extra)


def assert_matches(pg, ref, off, what):
    wc.assert_matches(pg, ref, off, what, match_max=MATCH_MAX, match_mean=MATCH_MEAN, changed_mean=CHANGED_MEAN,
                      changed_max=CHANGED_MAX)


# name: (PG's dict arguments, the reference's ω and schedule)
CASES = {
    "auto": ({"schedule": "auto"}, 0.5, "auto"),
    "auto-empty-prompt": ({"schedule": "auto", "weak_prompt": "empty"}, 0.5, "auto"),
    "linear-falling": ({"schedule": "linear", "omega": 1.0, "omega_end": 0.0}, 1.0, "linear:0:0:1"),
    "linear-band": ({"schedule": "linear", "omega": 0.2, "omega_end": 0.8, "start": 0.2, "end": 0.8}, 0.2,
                    "linear:0.8:0.2:0.8"),
    "constant-late-band": ({"omega": 0.0, "start": 0.5}, 0.0, "constant:0:0.5:1"),
}


@pytest.fixture(scope="module")
def off(api):
    return api.txt2img(request())["pixels"]


@pytest.fixture(scope="module")
def auto_image(api):
    return api.txt2img(wc.with_pg(request(), [{"enabled": True, "schedule": "auto"}]))


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_matches_per_step_reference(api, off, case):
    values, omega, schedule = CASES[case]
    pg = api.txt2img(wc.with_pg(request(), [{"enabled": True, **values}]))
    ref = api.txt2img(wc.with_ref(request(), omega, weak_prompt=values.get("weak_prompt", "negative"),
                                  schedule=schedule))
    assert f"schedule {schedule}" in ref["infotexts"][0], "the reference did not run with the schedule"
    if values.get("schedule", "constant") != "constant":
        assert f"PG schedule: {values['schedule']}" in pg["infotexts"][0], pg["infotexts"][0]
    assert_matches(pg["pixels"], ref["pixels"], off, case)


def test_reference_schedule_is_not_the_constant_omega(api, off):
    """The check above can fail: the per-step reference of auto differs from the reference at a constant ω = 0."""
    auto = api.txt2img(wc.with_ref(request(), 0.5, schedule="auto"))["pixels"]
    zero = api.txt2img(wc.with_ref(request(), 0.0))["pixels"]
    print(f"reference auto vs constant ω=0: {wc.diff(auto, zero)}; vs off: {wc.diff(auto, off)} (max, mean /255)")
    assert wc.diff(auto, zero)[0] >= CHANGED_MAX and wc.diff(auto, off)[0] >= CHANGED_MAX


def test_auto_positional_equals_dict_and_ignores_omega(api, auto_image):
    positional = api.txt2img(wc.with_pg(request(), wc.pg_args(omega=0.9, schedule="auto", omega_end=0.7)))
    assert_equal(positional["pixels"], auto_image["pixels"], "auto positional (ω 0.9) vs dict (ω default)")
    assert "PG schedule: auto" in positional["infotexts"][0] and "PG omega end" not in positional["infotexts"][0]


@pytest.mark.parametrize("args, field", [
    ([{"enabled": True, "schedule": "zigzag"}], "schedule"),
    (wc.pg_args(schedule="automatic"), "schedule"),
    ([{"enabled": True, "schedule": "linear", "omega_end": 2}], "omega_end"),
])
def test_bad_schedule_is_4xx_naming_the_field(api, off, args, field):
    r = api.post_raw("/sdapi/v1/txt2img", wc.with_pg(request(), args))
    assert 400 <= r.status_code < 500, f"HTTP {r.status_code}: {r.text[:300]}"
    assert f"'{field}'" in r.text, r.text[:300]
    assert_equal(api.txt2img(request())["pixels"], off, "PG-off after the bad request")


@pytest.mark.parametrize("values, keys", [
    ({"schedule": "auto"}, (("PG schedule", "auto"),)),
    ({"schedule": "linear", "omega": 1.0, "omega_end": 0.25}, (("PG schedule", "linear"), ("PG omega end", "0.25"))),
])
def test_paste_round_trip_restores_the_schedule(api, values, keys):
    pg = api.txt2img(wc.with_pg(request(), [{"enabled": True, **values}]))
    params = api.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + pg["raw_images"][0]})
    for key, value in keys:
        assert f"{key}: {value}" in params["info"], params["info"]
    try:
        api.txt2img({**request(), "infotext": api.txt2img(request())["infotexts"][0]})
    except wc.ApiError as e:  # Forge and Neo: TypeError in modules/api/api.py, PG or not (test_pg_webui.py)
        pytest.skip(f"this host's API cannot apply even a PG-off infotext: {e}")
    again = api.txt2img({**request(), "infotext": params["info"]})
    assert f"PG schedule: {values['schedule']}" in again["infotexts"][0], again["infotexts"][0]
    assert_equal(again["pixels"], pg["pixels"], f"image from the pasted infotext vs the original ({values})")


def test_xyz_over_the_schedule(api, off, auto_image):
    payload = _xyz_payload(api, "constant, auto", axis="[PG] ω schedule", dropdown=True, steps=STEPS, cfg_scale=CFG)
    r = api.txt2img(payload)
    cells = r["images"][1:]
    assert len(cells) == 2, f"expected the grid and 2 cells, got {len(r['images'])} images"
    constant = api.txt2img(wc.with_pg(request(), [{"enabled": True, "omega": 0.5}]))["pixels"]
    assert_equal(cells[0], constant, "X/Y/Z cell 'constant' vs PG ω=0.5")
    assert_equal(cells[1], auto_image["pixels"], "X/Y/Z cell 'auto' vs PG auto")
    text = json.dumps(r["info"])
    assert "PG schedule: auto" in text


def test_xyz_bad_schedule_value_fails(api, off):
    r = api.post_raw("/sdapi/v1/txt2img", _xyz_payload(api, "auto, zigzag", axis="[PG] ω schedule", dropdown=True, steps=STEPS, cfg_scale=CFG))
    assert 400 <= r.status_code < 500, f"HTTP {r.status_code} {r.text[:300]}"
    assert "schedule" in r.text and "zigzag" in r.text, r.text[:300]
