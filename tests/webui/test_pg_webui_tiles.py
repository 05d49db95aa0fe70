"""PG with Forge/Neo's built-in MultiDiffusion tiles (issue 17 item 6), against the slow reference.

With Tile Batch Size k the UNet call holds k tiles of the marked batch, tile-major, while the rows' marks
stay per chunk. The reference (tests/webui/hosts/reference_ext) runs MultiDiffusion's whole tiled call
twice, at θ' and at θ_ω, and takes the uncond chunks of the merged result: it reads no tile layout, so
it checks the one PG reads. Skips where the host has no "MultiDiffusion Integrated" script (A1111); a method
the host's script does not offer (reForge's SpotDiffusion: a shifted grid per step) skips where it is missing.
MultiDiffusion is an img2img script in Forge/Neo (in both tabs in reForge); tiles are at least 256 px, so the
image is 384 px.
"""
from __future__ import annotations

import pytest

import webui_client as wc

MD = "multidiffusion integrated"
SIZE, TILE, OVERLAP = 384, 256, 128  # 2 x 2 tiles of the 48 x 48 latent
MATCH_MAX = 2.0
MATCH_MEAN = 0.1
CHANGED_MEAN = 1.0


@pytest.fixture(scope="module")
def multidiffusion(api):
    """The host's MultiDiffusion methods (the choices of its Method radio), or skip."""
    info = [s for s in api.get("/sdapi/v1/script-info") if s["name"] == MD and s["is_img2img"]]
    if not info:
        pytest.skip("this host has no MultiDiffusion Integrated script")
    return {c for arg in info[0]["args"] for c in (arg.get("choices") or []) if isinstance(c, str)}


@pytest.fixture(scope="module")
def init_image(api, multidiffusion):
    return api.txt2img(wc.base_request(size=SIZE, steps=2))["pixels"]


def _tiled(init, tile_batch: int, method: str) -> dict:
    payload = wc.base_request(size=SIZE, steps=3, init_images=[wc.encode(init)], denoising_strength=0.6)
    payload.setdefault("alwayson_scripts", {})[MD] = {"args": [True, method, TILE, TILE, OVERLAP, tile_batch]}
    return payload


@pytest.mark.parametrize("tile_batch, method", [(1, "MultiDiffusion"), (2, "MultiDiffusion"),
                                                (2, "Mixture of Diffusers"), (2, "SpotDiffusion")])
def test_tiles_match_the_reference(api, multidiffusion, init_image, tile_batch, method):
    if method not in multidiffusion:
        pytest.skip(f"this host's MultiDiffusion has no {method!r} (it has {sorted(multidiffusion)})")
    base = _tiled(init_image, tile_batch, method)
    try:
        off = api.img2img(base)
    except wc.ApiError as e:  # e.g. reForge's SpotDiffusion reads a `store.sigmas` its WebUI path never sets
        pytest.skip(f"the host's own {method} fails with PG off: {e}")
    assert f"multidiffusion_tile_batch_size: {tile_batch}" in off["infotexts"][0], "MultiDiffusion did not run"
    pg = api.img2img(wc.with_pg(base, wc.pg_args(omega=0.5)))
    ref = api.img2img(wc.with_ref(base, 0.5))
    assert "PG reference" in ref["infotexts"][0], "the reference did not run"
    assert "PG note" not in pg["infotexts"][0], pg["infotexts"][0]
    mx, mean = wc.diff(pg["pixels"], ref["pixels"])
    off_mean = wc.diff(pg["pixels"], off["pixels"])[1]
    print(f"tiles {method} batch {tile_batch}: PG vs reference max {mx}/255 mean {mean:.4f}/255; "
          f"PG vs off mean {off_mean:.2f}/255")
    assert off_mean >= CHANGED_MEAN, f"PG did not change the image (mean |Δ| {off_mean:.3f}/255)"
    assert mx <= MATCH_MAX and mean <= MATCH_MEAN, f"PG vs reference max {mx}/255, mean {mean:.4f}/255"
