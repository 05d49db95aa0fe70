"""Personalization Guidance through the real WebUI's HTTP API (LoRA mode, API, X/Y/Z, paste).

Every "matches the reference" check compares PG against tests/webui/reference_ext (the weak branch run a
second time with θ_ω materialized) in the same WebUI, same seed.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import webui_client as wc

EQUAL_MAX = 1.0       # "equals the PG-off image": at most 1/255 per pixel
MATCH_MAX = 2.0       # PG vs the slow reference: float reordering only (measured: max 1/255)
MATCH_MEAN = 0.1
CHANGED_MEAN = 1.0    # ω < 1 must visibly change the image (measured ~40/255 mean at ω = 0.5)


def assert_equal(a, b, what):
    mx, mean = wc.diff(a, b)
    assert mx <= EQUAL_MAX, f"{what}: max |Δ| {mx}/255, mean {mean:.3f}/255"


def assert_matches(pg, ref, off, what):
    wc.assert_matches(pg, ref, off, what, match_max=MATCH_MAX, match_mean=MATCH_MEAN, changed_mean=CHANGED_MEAN)


# -- LoRA mode: ω = 1 is CFG, ω < 1 is the reference ------------------------------------------------

def test_omega_one_equals_off(api, off_image):
    pg = api.txt2img(wc.with_pg(wc.base_request(), wc.pg_args(omega=1.0)))
    assert_equal(pg["pixels"], off_image, "PG ω=1 vs off")
    assert "PG omega: 1.0" in pg["infotexts"][0]


CASES = {
    "lora1": dict(prompt=wc.PROMPT_LORA, omega=0.5, pg={}, ref={}),
    "lora0.6": dict(prompt="a photo of a cat <lora:rand_lora:0.6>", omega=0.3, pg={}, ref={}),
    "second-lora-unselected": dict(prompt="a photo of a cat <lora:rand_lora:1> <lora:pg_other_lora:0.8>", omega=0.5,
                                   pg={"loras": "rand_lora"}, ref={"loras": "rand_lora"}),
    # issue 17 item 1: Neo's loader clones only the patchers a LoRA has keys for
    "unet-only-next-to-full": dict(prompt="a photo of a cat <lora:pg_unet_only:1> <lora:pg_other_lora:0.8>", omega=0.0,
                                   pg={"loras": "pg_unet_only"}, ref={"loras": "pg_unet_only"}),
    "te-only-next-to-full": dict(prompt="a photo of a cat <lora:pg_te_only:1> <lora:pg_other_lora:0.8>", omega=0.3,
                                 pg={"loras": "pg_te_only"}, ref={"loras": "pg_te_only"}),
    "batch2-AND-empty": dict(prompt="a photo of a cat <lora:rand_lora:1> AND a red hat :0.7", omega=0.4,
                             pg={"weak_prompt": "empty"}, ref={"weak_prompt": "empty"}, batch_size=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(api, images, case):
    c = CASES[case]
    base = wc.base_request(prompt=c["prompt"], batch_size=c.get("batch_size", 1))
    off = api.txt2img(base)["pixels"]
    pg = api.txt2img(wc.with_pg(base, wc.pg_args(omega=c["omega"], **c["pg"])))
    ref = api.txt2img(wc.with_ref(base, c["omega"], **c["ref"]))
    assert "PG reference" in ref["infotexts"][0], "the reference did not run"
    assert f"PG omega: {c['omega']}" in pg["infotexts"][0]
    if case == "lora1":
        images["pg_0.5"] = pg
    if c.get("batch_size", 1) == 2:
        assert pg["pixels"].shape[0] == 2
        for i in range(2):
            assert_matches(pg["pixels"][i], ref["pixels"][i], off[i], f"{case}[{i}]")
    else:
        assert_matches(pg["pixels"], ref["pixels"], off, case)


def test_unselected_lora_is_not_weakened(api):
    """Selecting only pg_other_lora must give another image than selecting rand_lora (the selection is honoured)."""
    base = wc.base_request(prompt="a photo of a cat <lora:rand_lora:1> <lora:pg_other_lora:0.8>")
    a = api.txt2img(wc.with_pg(base, wc.pg_args(omega=0.5, loras="pg_other_lora")))
    assert "PG LoRAs: pg_other_lora" in a["infotexts"][0]
    b = api.txt2img(wc.with_ref(base, 0.5, loras="pg_other_lora"))
    assert_matches(a["pixels"], b["pixels"], api.txt2img(base)["pixels"], "only pg_other_lora selected")


# -- hires fix, img2img -------------------------------------------------------------------------------

# hr_cfg: the forks have a separate hires CFG scale, 1.0 (no uncond, nothing for PG) unless given; Forge's API
# fails a hires job without hr_additional_modules (TypeError in processing.py: it is None); A1111 ignores both
HIRES = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5, hr_cfg=7.0,
             hr_additional_modules=["Use same choices"])


def hires_request(api) -> dict:
    """HIRES with an upscaler the host has offline: "Latent", or "None" (a plain resize) where the host has
    no latent modes (Forge Neo: /sdapi/v1/latent-upscale-modes is empty)."""
    latent = [m.get("name") for m in api.get("/sdapi/v1/latent-upscale-modes")]
    return wc.base_request(**dict(HIRES, hr_upscaler="Latent" if "Latent" in latent else "None"))


def test_hires_fix(api):
    base = hires_request(api)
    off = api.txt2img(base)["pixels"]
    # upscaled by hr_scale 1.5: 96 px in A1111; Forge Neo rounds it to the nearest multiple of 64 (128 px)
    assert off.shape[0] > base["height"] and off.shape[1] > base["width"], off.shape
    one = api.txt2img(wc.with_pg(base, wc.pg_args(omega=1.0)))["pixels"]
    assert_equal(one, off, "hires PG ω=1 vs off")
    on = api.txt2img(wc.with_pg(base, wc.pg_args(omega=0.5)))
    first_only = api.txt2img(wc.with_pg(base, wc.pg_args(omega=0.5, hires=False)))
    assert wc.diff(on["pixels"], off)[1] >= CHANGED_MEAN
    assert wc.diff(on["pixels"], first_only["pixels"])[1] > 0, "PG in the hires pass changed nothing"
    assert "PG hires" in first_only["infotexts"][0]


def test_img2img(api, off_image):
    base = wc.base_request(init_images=[wc.encode(off_image)], denoising_strength=0.6)
    off = api.img2img(base)["pixels"]
    one = api.img2img(wc.with_pg(base, wc.pg_args(omega=1.0)))["pixels"]
    assert_equal(one, off, "img2img PG ω=1 vs off")
    pg = api.img2img(wc.with_pg(base, wc.pg_args(omega=0.5)))
    ref = api.img2img(wc.with_ref(base, 0.5))
    assert "PG omega: 0.5" in pg["infotexts"][0]
    assert_matches(pg["pixels"], ref["pixels"], off, "img2img")


# -- API argument forms -------------------------------------------------------------------------------

def _pg_05(api, images):
    if "pg_0.5" not in images:
        images["pg_0.5"] = api.txt2img(wc.with_pg(wc.base_request(), wc.pg_args(omega=0.5)))
    return images["pg_0.5"]


def test_positional_args(api, images, off_image):
    pg = _pg_05(api, images)
    for key in ("PG omega: 0.5", "PG weak prompt: negative"):
        assert key in pg["infotexts"][0]
    assert wc.diff(pg["pixels"], off_image)[1] >= CHANGED_MEAN


def test_dict_args(api, images, off_image):
    pg = api.txt2img(wc.with_pg(wc.base_request(), [{"enabled": True, "omega": 0.5, "start": 0.0, "end": 1.0}]))
    assert "PG omega: 0.5" in pg["infotexts"][0] and "PG weak prompt" in pg["infotexts"][0]
    assert wc.diff(pg["pixels"], off_image)[1] >= CHANGED_MEAN
    assert_equal(pg["pixels"], _pg_05(api, images)["pixels"], "dict args vs the same positional args")


def test_disabled_writes_no_infotext(api, off_image):
    r = api.txt2img(wc.with_pg(wc.base_request(), wc.pg_args(enabled=False, omega=0.2)))
    assert "PG " not in r["infotexts"][0]
    assert_equal(r["pixels"], off_image, "PG disabled vs off")


BAD = {
    "omega=2": (wc.pg_args(omega=2), "omega"),
    "omega=x": (wc.pg_args(omega="x"), "omega"),
    "unknown lora": (wc.pg_args(omega=0.5, loras="no_such_lora"), "loras"),
    "weak_prompt=zz": (wc.pg_args(weak_prompt="zz"), "weak_prompt"),
    "start>=end": (wc.pg_args(start=0.6, end=0.4), "start"),
    "start==end": (wc.pg_args(start=0.5, end=0.5), "start"),
    "unknown dict key": ([{"enabled": True, "omega": 0.5, "omgea": 0.3}], "omgea"),
    "unknown base": (wc.pg_args(base_checkpoint="no_such_checkpoint"), "base_checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_4xx(api, case):
    args, field = BAD[case]
    r = api.post_raw("/sdapi/v1/txt2img", wc.with_pg(wc.base_request(), args))
    assert 400 <= r.status_code < 500, f"{case}: HTTP {r.status_code}: {r.text[:300]}"
    assert field in r.text, f"{case}: message does not name '{field}': {r.text[:300]}"


def test_server_fine_after_bad_input(api, off_image):
    assert_equal(api.txt2img(wc.base_request())["pixels"], off_image, "PG-off after the bad requests")


# -- X/Y/Z plot ---------------------------------------------------------------------------------------

def _xyz_payload(api, values: str, axis: str = "[PG] ω", dropdown: bool = False, **request) -> dict:
    """`dropdown`: an axis with choices (the X/Y/Z script reads its values from the dropdown list then)."""
    info = api.get("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = xyz["args"][0]["choices"]
    index = choices.index(axis)
    payload = wc.base_request(**request)
    # built from the host's own argument list (the forks' X/Y/Z has other arguments in another order):
    # every control at its UI default, then the axes (types are dropdown indices, 0 = Nothing) and two checkboxes
    args = [a.get("value") for a in xyz["args"]]
    listed = [v.strip() for v in values.split(",")] if dropdown else []
    args[:9] = [index, values, listed, 0, "", [], 0, "", []]
    labels = [a.get("label") for a in xyz["args"]]
    args[labels.index("Draw legend")] = True
    args[labels.index("Include Sub Images")] = True  # the cells come back after the grid
    payload.update(script_name="x/y/z plot", script_args=args)
    return payload


def test_xyz_over_omega(api, images, off_image):
    r = api.txt2img(_xyz_payload(api, "1, 0.5"))
    grid, cells = r["images"][0], r["images"][1:]
    assert len(cells) == 2, f"expected the grid and 2 cells, got {len(r['images'])} images"
    assert grid.shape[1] >= 2 * 64 and grid.shape[0] > 64  # two cells side by side under a legend
    assert_equal(cells[0], off_image, "X/Y/Z cell ω=1 vs off")
    assert_equal(cells[1], _pg_05(api, images)["pixels"], "X/Y/Z cell ω=0.5 vs PG ω=0.5")
    text = json.dumps(r["info"])
    assert "PG omega: 1.0" in text and "PG omega: 0.5" in text


def test_xyz_bad_value_fails(api, off_image):
    r = api.post_raw("/sdapi/v1/txt2img", _xyz_payload(api, "0.5, 2"))
    assert 400 <= r.status_code < 500, f"bad X/Y/Z value: HTTP {r.status_code} {r.text[:300]}"
    assert "omega" in r.text and "2" in r.text, r.text[:300]
    assert_equal(api.txt2img(wc.base_request())["pixels"], off_image, "PG-off after the bad grid")


# -- paste round-trip ---------------------------------------------------------------------------------

def test_paste_round_trip(api):
    base = wc.base_request()
    pg = api.txt2img(wc.with_pg(base, wc.pg_args(omega=0.4, weak_prompt="empty", start=0.1, end=0.9,
                                                 loras="rand_lora")))
    params = api.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + pg["raw_images"][0]})
    got = params["info"]
    parsed = params.get("parameters") or {}
    for key, value in (("PG omega", "0.4"), ("PG weak prompt", "empty"), ("PG start", "0.1"), ("PG end", "0.9"),
                       ("PG LoRAs", "rand_lora")):
        assert f"{key}: {value}" in got, f"{key} missing from the PNG's infotext: {got}"
        assert str(parsed.get(key)) == value, f"png-info parameters: {key} = {parsed.get(key)!r}"
    try:
        api.txt2img({**base, "infotext": api.txt2img(base)["infotexts"][0]})
    except wc.ApiError as e:  # Forge dfdcbab6: TypeError in modules/api/api.py get_field_value, PG or not
        pytest.skip(f"this host's API cannot apply even a PG-off infotext: {e}")
    again = api.txt2img({**base, "infotext": got})
    assert "PG omega: 0.4" in again["infotexts"][0], again["infotexts"][0]
    assert_equal(again["pixels"], pg["pixels"], "image from the pasted infotext vs the original PG image")


def _interrupt_when_sampling(url: str, done: threading.Event) -> bool:
    """Interrupt the running job once the host reports a sampling step; True if it did."""
    client = wc.Client(url, timeout=30)
    while not done.is_set():
        state = client.get("/sdapi/v1/progress?skip_current_image=true").get("state", {})
        if state.get("sampling_step", 0) >= 2:
            client.post("/sdapi/v1/interrupt", {})
            return True
        time.sleep(0.2)
    return False


def test_interrupt_leaves_nothing_behind(api, images, off_image, webui_url):
    """A PG job interrupted mid-sampling ends; afterwards PG-off and PG ω=0.5 give exactly their old images."""
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        interrupted = pool.submit(_interrupt_when_sampling, webui_url, done)
        try:
            cut = api.txt2img(wc.with_pg(wc.base_request(steps=40), wc.pg_args(omega=0.5)))
        finally:
            done.set()
        assert interrupted.result(), "the job ended before the interrupt could be sent"
    assert "PG omega: 0.5" in cut["infotexts"][0]
    now = api.txt2img(wc.base_request())["pixels"]
    assert (now == off_image).all(), f"PG-off changed after an interrupted PG job: {wc.diff(now, off_image)}"
    again = api.txt2img(wc.with_pg(wc.base_request(), wc.pg_args(omega=0.5)))
    assert (again["pixels"] == _pg_05(api, images)["pixels"]).all(), "PG ω=0.5 changed after an interrupted PG job"


def test_zz_model_untouched_after_lora_jobs(api, off_image):
    """Before the DreamBooth module reloads checkpoints (which would mask leftovers): PG-off is bit-identical."""
    now = api.txt2img(wc.base_request())["pixels"]
    assert (now == off_image).all(), f"PG-off changed after PG jobs: {wc.diff(now, off_image)}"
