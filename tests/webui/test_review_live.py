"""Issue 10, review bugs 1, 2 and 6, shown in the real A1111 v1.10.1 harness (opt-in, like the rest of tests/webui).

1. Loopback and SD upscale call `process_images` on one processing object again and again: the base
   checkpoint must be read once per call (with "base checkpoints kept in memory" = 0), the images must
   equal PG's own single jobs, and nothing may be left on the model.
2. A same-architecture refiner (`refiner_checkpoint`) is loaded into the same model object: PG must turn
   off for the rest of the pass, say so in 'PG note', and not run the weak rows on the old weights.
6. A base checkpoint that is in the WebUI's list but missing or damaged on disk is HTTP 422 naming
   'base_checkpoint' and the checkpoint, never a 500 or a server path.

Base reads are counted from the WebUI's console log ("PG: reading base checkpoint"): PG_WEBUI_LOG, or
$HARNESS/logs/webui-<port>.log as the harness's start.sh writes it; the tests that need it skip without it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from urllib.parse import urlparse

import numpy as np
import pytest

import webui_client as wc
from test_pg_webui import assert_equal

SD15, DB = "rand_sd15", "rand_sd15_dreambooth"
PROMPT = "a photo of a sks cat"
READ_LINE = "PG: reading base checkpoint"
NO_BASE_CACHE = {"pg_base_cache_size": 0}
SEED = 4321
I2I = dict(steps=4, denoising_strength=0.6)


# -- fixtures and helpers -------------------------------------------------------------------------------

class ConsoleLog:
    """The WebUI's console log file: what was written between a mark and now."""

    def __init__(self, path: str):
        self.path = path

    def mark(self) -> int:
        return os.path.getsize(self.path)

    def since(self, mark: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def console(webui_url):
    path = os.environ.get("PG_WEBUI_LOG")
    if not path:
        harness = os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness")
        path = os.path.join(harness, "logs", f"webui-{urlparse(webui_url).port}.log")
    if not os.path.isfile(path):
        pytest.skip(f"no WebUI console log at {path} (set PG_WEBUI_LOG): base reads cannot be counted")
    return ConsoleLog(path)


def _checkpoint_names(api) -> tuple[str, str]:
    """(loaded checkpoint's model name, the other harness checkpoint): the other is the base / the refiner."""
    title = api.get("/sdapi/v1/options")["sd_model_checkpoint"]
    loaded = next((m["model_name"] for m in api.get("/sdapi/v1/sd-models")
                   if title in (m["title"], m["model_name"]) or m["title"].startswith(title)), None)
    if loaded not in (SD15, DB):
        pytest.skip(f"the loaded checkpoint is {title!r}, not one of the harness pair {SD15}/{DB}")
    return loaded, DB if loaded == SD15 else SD15


@pytest.fixture(scope="module")
def pair(api):
    return _checkpoint_names(api)


def _after_off(api, off_image, what):
    """The next PG-off image (the suite's standard request) is bit-identical to the one from the start."""
    r = api.txt2img(wc.base_request())
    now = r["pixels"]
    assert (now == off_image).all(), f"PG-off image changed after {what}: max/mean |Δ| {wc.diff(now, off_image)}"
    return r


def _i2i(init: np.ndarray, seed: int, pg_base: str | None, **extra) -> dict:
    r = wc.base_request(prompt=PROMPT, seed=seed, init_images=[wc.encode(init)], **{**I2I, **extra})
    r["override_settings"] = {**r["override_settings"], **NO_BASE_CACHE}
    if pg_base:
        r = wc.with_pg(r, wc.pg_args(omega=0.5, base_checkpoint=pg_base))
    return r


def _single_jobs(api, console, inits_and_seeds, base):
    """PG's own single img2img jobs (one process_images each), with the base reads each one did.

    img2img's VAE encode samples the latent with torch's global generator, which A1111 seeds only later
    (at the first noise): a job's init latent depends on the job before it. So the first single job must
    follow the same request as the script job did (the standard PG-off image), the others follow each other.
    """
    out, reads = [], []
    for init, seed in inits_and_seeds:
        mark = console.mark()
        out.append(api.img2img(_i2i(init, seed, base))["pixels"])
        reads.append(console.since(mark).count(READ_LINE))
    return out, reads


# -- 1. loopback and SD upscale: one base read per process_images call ------------------------------------
#
# The base is a copy of rand_sd15 with its 80 self-attention q/k/v and cross-attention k/v weights perturbed
# (a "fine-tune" of the attention only): its exact differences are ~0.2 GB, not a UNet's 3.4 GB as for the
# harness DreamBooth pair. Before the fix every stale session of a loopback/SD-upscale job keeps its own
# copy of the differences: with the DreamBooth pair, 2 loops took the WebUI to 18.6 GB RSS and the kernel
# killed it (24 GB machine).

NEAR_BASE = "pg_review_near_base"
PERTURBED = ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn2.to_k.weight", "attn2.to_v.weight")
UNITS = 3  # loops / tiles: before the fix the base is read 1 + 2 + ... + UNITS times


def make_near_base(source: str, target: str) -> int:
    """Copy `source` (a .safetensors checkpoint) to `target` with PERTURBED UNet weights moved by 0.3 σ (seeded)."""
    part = target + ".part"
    shutil.copyfile(source, part)
    rng = np.random.default_rng(20261201)
    changed = 0
    with open(part, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        for name in sorted(k for k in header if k.startswith("model.diffusion_model.") and k.endswith(PERTURBED)):
            info = header[name]
            dtype = {"F16": np.float16, "F32": np.float32}[info["dtype"]]
            begin, stop = info["data_offsets"]
            f.seek(8 + size + begin)
            w = np.frombuffer(f.read(stop - begin), dtype=dtype).astype(np.float32)
            w = w + np.float32(0.3 * w.std()) * rng.standard_normal(w.size, dtype=np.float32)
            f.seek(8 + size + begin)
            f.write(w.astype(dtype).tobytes())
            changed += 1
    os.replace(part, target)
    return changed


@pytest.fixture(scope="module")
def near_base(api, pair):
    """The near base's title in the WebUI's list (loaded checkpoint: rand_sd15); the file is removed afterwards."""
    loaded, _ = pair
    if loaded != SD15:
        pytest.skip(f"the near base is made from {SD15}, but {loaded} is loaded")
    source = next(m["filename"] for m in api.get("/sdapi/v1/sd-models") if m["model_name"] == SD15)
    if not os.path.isfile(source):
        pytest.skip("the harness checkpoints are not on this machine's disk (remote WebUI?)")
    path = os.path.join(os.path.dirname(source), NEAR_BASE + ".safetensors")
    try:
        if not os.path.isfile(path):
            assert make_near_base(source, path) == 80
        api.post("/sdapi/v1/refresh-checkpoints", {})
        yield next(m["title"] for m in api.get("/sdapi/v1/sd-models") if m["model_name"] == NEAR_BASE)
    finally:
        for leftover in (path, path + ".part"):
            if os.path.exists(leftover):
                os.remove(leftover)
        api.post("/sdapi/v1/refresh-checkpoints", {})


def test_loopback_reads_base_once_per_loop(api, console, near_base, off_image):
    payload = _i2i(off_image, SEED, near_base)
    payload.update(script_name="loopback", script_args=[UNITS, I2I["denoising_strength"], "Linear", "None"])
    _after_off(api, off_image, "the earlier tests")  # the predecessor of loop 1 (see _single_jobs)
    mark = console.mark()
    r = api.img2img(payload)
    reads = console.since(mark).count(READ_LINE)
    loop_images = r["images"][-UNITS:]  # the grid (opts.return_grid) comes first
    _after_off(api, off_image, "the loopback job")  # also: the same predecessor for the first single job
    # PG's single jobs: loop i is img2img of loop i-1's image with seed + i (same denoising: "Linear" to itself)
    singles, single_reads, init = [], [], off_image
    for i in range(UNITS):
        images, n = _single_jobs(api, console, [(init, SEED + i)], near_base)
        singles += images
        single_reads += n
        init = images[0]
    plain = api.img2img(_i2i(off_image, SEED, None))["pixels"]
    print(f"\nloopback x{UNITS} (base {near_base}, cache 0): {reads} base reads (single jobs: {single_reads}); "
          f"{len(r['images'])} images returned")
    for i, (got, want) in enumerate(zip(loop_images, singles)):
        print(f"  loop {i + 1} vs PG single job: max/mean |Δ| {wc.diff(got, want)}")
    print(f"  PG single job vs PG-off: mean |Δ| {wc.diff(singles[0], plain)[1]:.2f}/255")
    _after_off(api, off_image, "the single jobs")
    assert single_reads == [1] * UNITS, f"a single PG job read the base {single_reads} times"
    assert wc.diff(singles[0], plain)[1] >= 1.0, "PG did not change the img2img image: nothing to compare"
    assert reads == UNITS, f"loopback with {UNITS} loops read the base {reads} times (expected {UNITS}: once per loop)"
    for i, (got, want) in enumerate(zip(loop_images, singles)):
        assert_equal(got, want, f"loop {i + 1} vs PG's single job")


def test_sd_upscale_reads_base_once_per_tile(api, console, near_base, off_image):
    """SD upscale ("None" upscaler, scale 1): a 160x64 image in three 64x64 tiles overlapping by 16 px."""
    width = 64 + 48 * (UNITS - 1)
    init = np.ascontiguousarray(np.concatenate([off_image, off_image[:, ::-1]] * UNITS, axis=1)[:, :width])
    payload = _i2i(init, SEED, near_base, width=64, height=64)
    payload.update(script_name="sd upscale", script_args=[None, 16, "None", 1.0])
    _after_off(api, off_image, "the earlier tests")  # the predecessor of tile 0 (see _single_jobs)
    mark = console.mark()
    r = api.img2img(payload)
    reads = console.since(mark).count(READ_LINE)
    combined = r["images"][0]
    assert combined.shape == (64, width, 3), combined.shape
    _after_off(api, off_image, "the SD upscale job")  # also: the same predecessor for the first single job
    tiles, single_reads = _single_jobs(api, console, [(init[:, 48 * i:48 * i + 64], SEED + i) for i in range(UNITS)],
                                       near_base)
    # outside the 16-px blends, tile i (at x = 48 i) shows as it came out of its img2img job
    parts = []
    for i, tile in enumerate(tiles):
        lo, hi = (0 if i == 0 else 16), (64 if i == UNITS - 1 else 48)
        parts.append((combined[:, 48 * i + lo:48 * i + hi], tile[:, lo:hi]))
    print(f"\nSD upscale, {UNITS} tiles (base {near_base}, cache 0): {reads} base reads (single jobs: {single_reads})")
    for i, (got, want) in enumerate(parts):
        print(f"  tile {i} vs PG single job: max/mean |Δ| {wc.diff(got, want)}")
    _after_off(api, off_image, "the single jobs")
    assert single_reads == [1] * UNITS, f"a single PG job read the base {single_reads} times"
    assert reads == UNITS, f"SD upscale with {UNITS} tiles read the base {reads} times (expected {UNITS}: once per tile)"
    for i, (got, want) in enumerate(parts):
        assert_equal(got, want, f"SD upscale tile {i} vs PG's single job")


# -- 2. a same-architecture refiner loaded into the same model object -------------------------------------

REFINE_STEPS = 8
SWITCH_AT = 0.25
# The refiner switches (by sampling steps) when step / steps >= 0.25, i.e. before the UNet call of step 2.
# PG's callback sees A1111's state.sampling_step, which the sampler's callback sets after each step
# (0, 0, 1, 2, ... for the calls 0, 1, 2, 3, ...): 'PG end' 0.125 keeps PG on for calls 0 and 1 exactly,
# i.e. up to the switch. An early switch leaves 6 of 8 steps in which stale weak rows would show.
END_AT_SWITCH = 0.125


def _refiner_request(refiner: str, **pg) -> dict:
    r = wc.base_request(steps=REFINE_STEPS, refiner_checkpoint=refiner, refiner_switch_at=SWITCH_AT)
    r["override_settings"] = {**r["override_settings"], "refiner_switch_by_sample_steps": True}
    return wc.with_pg(r, wc.pg_args(omega=0.5, **pg)) if pg else r


def test_same_architecture_refiner_turns_pg_off(api, console, pair, off_image):
    loaded, refiner = pair
    before = api.get("/sdapi/v1/options")["sd_model_checkpoint"]
    mark = console.mark()
    pg = api.txt2img(_refiner_request(refiner, end=1.0))
    log_pg = console.since(mark)
    until_switch = api.txt2img(_refiner_request(refiner, end=END_AT_SWITCH))
    plain = api.txt2img(_refiner_request(refiner))
    mark = console.mark()
    after = _after_off(api, off_image, "the refiner jobs")
    log_after = console.since(mark)
    text = pg["infotexts"][0]
    loads = re.findall(r"Loading weights \[[^\]]*\] from [^\n]*", log_pg + log_after)
    print(f"\nrefiner {refiner} at {SWITCH_AT} over loaded {loaded}: PG infotext: {text!r}")
    print(f"  checkpoint loads during the PG job and the next PG-off job: "
          f"{[os.path.basename(l.split(' from ')[-1]) for l in loads]}")
    print(f"  PG+refiner vs PG-until-the-switch+refiner: max/mean |Δ| {wc.diff(pg['pixels'], until_switch['pixels'])}")
    print(f"  PG-until-the-switch+refiner vs PG-off+refiner: mean |Δ| "
          f"{wc.diff(until_switch['pixels'], plain['pixels'])[1]:.3f}/255")
    assert f"Refiner: {refiner}" in text, f"the refiner did not run: {text}"
    assert api.get("/sdapi/v1/options")["sd_model_checkpoint"] == before, "the refiner changed the checkpoint setting"
    assert f"Model: {loaded}" in after["infotexts"][0], f"the next job did not run on {loaded}: {after['infotexts'][0]}"
    assert wc.diff(until_switch["pixels"], plain["pixels"])[1] > 0, "PG changed nothing before the switch"
    assert "PG note" in text and "refiner" in text.lower(), f"PG did not say it turned off at the refiner: {text}"
    assert_equal(pg["pixels"], until_switch["pixels"],
                 "PG on through a same-object refiner vs PG ending at the switch (the weak rows mixed two models)")


# -- 6. a listed base checkpoint that is missing or damaged on disk ---------------------------------------

def _models_dir(api) -> str:
    files = [m["filename"] for m in api.get("/sdapi/v1/sd-models") if m["model_name"] in (SD15, DB)]
    if not files or not all(os.path.isfile(f) for f in files):
        pytest.skip("the harness checkpoints are not on this machine's disk (remote WebUI?)")
    return os.path.dirname(files[0])


def _make_damaged(kind: str, source: str, path: str) -> None:
    if kind in ("missing", "truncated-copy-of-a-checkpoint"):
        with open(source, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            f.seek(0)
            head = f.read(8 + header + (1 << 20))  # the header and 1 MiB of the tensor data
        with open(path, "wb") as out:
            out.write(head)
    else:
        with open(path, "wb") as out:
            out.write(secrets.token_bytes(4096))


DAMAGED = ("missing", "truncated-copy-of-a-checkpoint", "random-bytes")


@pytest.mark.parametrize("kind", DAMAGED)
def test_listed_but_unreadable_base_is_422(api, pair, off_image, kind):
    loaded, other = pair
    models = _models_dir(api)
    source = next(m["filename"] for m in api.get("/sdapi/v1/sd-models") if m["model_name"] == other)
    name = f"pg_review_{kind.split('-')[0]}_{secrets.token_hex(3)}"
    path = os.path.join(models, name + ".safetensors")
    try:
        _make_damaged(kind, source, path)
        api.post("/sdapi/v1/refresh-checkpoints", {})
        title = next((m["title"] for m in api.get("/sdapi/v1/sd-models") if m["model_name"] == name), None)
        assert title, f"{name} is not in the WebUI's checkpoint list after refresh-checkpoints"
        if kind == "missing":
            os.remove(path)
        r = api.post_raw("/sdapi/v1/txt2img", wc.with_pg(wc.base_request(prompt=PROMPT),
                                                          wc.pg_args(omega=0.5, base_checkpoint=title)))
    finally:
        if os.path.exists(path):
            os.remove(path)
        api.post("/sdapi/v1/refresh-checkpoints", {})
    assert all(m["model_name"] != name for m in api.get("/sdapi/v1/sd-models")), "the test checkpoint is still listed"
    print(f"\n{kind} base {title!r}: HTTP {r.status_code}: {r.text[:400]}")
    leaked = [p for p in {models, os.path.realpath(models), os.path.dirname(models)} if p in r.text]
    _after_off(api, off_image, f"the {kind} base request")
    assert r.status_code == 422, f"{kind} base: HTTP {r.status_code}, expected 422: {r.text[:400]}"
    assert "base_checkpoint" in r.text and name in r.text, f"{kind} base: the message does not name the setting " \
                                                           f"and the checkpoint: {r.text[:400]}"
    assert not leaked, f"{kind} base: the answer carries the server's path {leaked}: {r.text[:400]}"
