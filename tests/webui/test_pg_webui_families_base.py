"""SDXL base-checkpoint mode in the real WebUI (issue 8): loaded rand_sdxl_dreambooth, base rand_sdxl.

The harness "DreamBooth" moves every UNet tensor (1 % noise everywhere, rank-8 changes on the attention), so
exact mode would hold θ_ω for the whole UNet (10 GB in fp32): on a machine that cannot hold it, PG must refuse
before sampling (HTTP 422 naming `base_mode`, the memory it needs, and low-memory), and the next PG-off image
must be bit-identical. Low-memory mode must run and come close to the slow exact reference (the reference
interpolates every UNet parameter in place; tests/webui/reference_ext).
"""
from __future__ import annotations

import pytest

import webui_client as wc
from test_pg_webui import assert_equal

FAMILY = "rand_sdxl"
DB, BASE = "rand_sdxl_dreambooth", "rand_sdxl"
PROMPT = "a photo of a sks cat"
OMEGA = 0.5


def db_request(**extra) -> dict:
    r = wc.base_request(prompt=PROMPT, **extra)
    r["override_settings"] = {**r["override_settings"], "sd_model_checkpoint": DB}
    return r


@pytest.fixture(scope="module")
def db_api(api, loaded_family):
    # module fixtures are set up before the function-scoped family check: skip here too
    if loaded_family != FAMILY:
        pytest.skip(f"written for {FAMILY}; the WebUI has {loaded_family or 'another model'} loaded")
    before = api.get("/sdapi/v1/options")["sd_model_checkpoint"]
    api.post("/sdapi/v1/options", {"sd_model_checkpoint": DB})
    yield api
    api.post("/sdapi/v1/options", {"sd_model_checkpoint": before})


@pytest.fixture(scope="module")
def db_off(db_api):
    r = db_api.txt2img(db_request())
    assert f"Model: {DB}" in r["infotexts"][0], r["infotexts"][0]
    return r["pixels"]


@pytest.fixture(scope="module")
def reference(db_api):
    r = db_api.txt2img(wc.with_ref(db_request(), OMEGA, base=BASE))
    assert "PG reference" in r["infotexts"][0]
    return r["pixels"]


def test_sdxl_db_omega_one_equals_off(db_api, db_off):
    r = db_api.txt2img(wc.with_pg(db_request(), wc.pg_args(omega=1.0, base_checkpoint=BASE, base_mode="low-memory")))
    assert_equal(r["pixels"], db_off, "SDXL DreamBooth PG ω=1 vs off")


def test_sdxl_db_low_memory_close_to_exact_reference(db_api, db_off, reference):
    low = db_api.txt2img(wc.with_pg(db_request(), wc.pg_args(omega=OMEGA, base_checkpoint=BASE, base_mode="low-memory")))
    text = low["infotexts"][0]
    assert "PG base mode: low-memory" in text and "PG note" not in text, text
    mx, mean = wc.diff(low["pixels"], reference)
    ref_vs_off = wc.diff(reference, db_off)[1]
    print(f"\nSDXL DreamBooth low-memory vs exact reference: max {mx}/255, mean {mean:.3f}/255 "
          f"(reference vs off: mean {ref_vs_off:.2f}/255)")
    assert ref_vs_off >= 1.0, "the reference did not change the image: nothing to compare"
    assert wc.diff(low["pixels"], db_off)[1] >= 1.0, "low-memory PG did not change the image"
    # This pair moves every UNet tensor by 1 % full-rank noise, which a low-rank budget of 12 % of the UNet
    # cannot hold (measured: 9.7 % kept, relative error of the difference 0.19; image mean |Δ| to the exact
    # reference 2.1/255, PG-off's 3.5/255). What low-memory mode must do: land nearer the exact weak model
    # than PG-off does. (SD 1.5's low-rank "DreamBooth" pair is held to half the distance.)
    assert mean < ref_vs_off, "low-memory mode is no nearer the exact reference than PG-off is"


def test_sdxl_db_exact_runs_or_is_refused_before_sampling(db_api, db_off, reference):
    r = db_api.post_raw("/sdapi/v1/txt2img", wc.with_pg(db_request(), wc.pg_args(omega=OMEGA, base_checkpoint=BASE)))
    print(f"\nSDXL DreamBooth exact: HTTP {r.status_code}: {r.text[:300]}")
    if r.status_code == 200:
        pixels = wc.decode(r.json()["images"][0])
        mx, mean = wc.diff(pixels, reference)
        assert mx <= 4 and mean <= 0.5, f"exact PG vs reference: max {mx}/255 mean {mean:.3f}/255"
    else:
        assert r.status_code == 422, f"HTTP {r.status_code}: {r.text[:400]}"
        for word in ("base_mode", "GiB", "low-memory"):
            assert word in r.text, f"the refusal does not mention {word!r}: {r.text[:400]}"
    assert_equal(db_api.txt2img(db_request())["pixels"], db_off, "SDXL DreamBooth PG-off after the exact request")
