"""Opt-in real-WebUI suite: skipped unless PG_WEBUI_URL points at a running WebUI with this extension
(A1111 v1.10.1, or a fork: tests/webui/hosts). The comparisons with the slow reference need the reference
extension linked too — tests/webui/reference_ext in A1111, tests/webui/hosts/reference_ext in the forks — and
skip without it (see tests/webui/README.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import webui_client as wc  # noqa: E402


@pytest.fixture(scope="session")
def webui_url():
    url = os.environ.get("PG_WEBUI_URL")
    if not url:
        pytest.skip("PG_WEBUI_URL not set: start ../shared/webui-harness/start.sh with this extension and tests/webui/reference_ext")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def api(webui_url):
    client = wc.Client(webui_url)
    scripts = client.get("/sdapi/v1/scripts")
    if "pg reference" not in [s.lower() for s in scripts["txt2img"]]:
        # no reference extension linked: only the comparisons with it skip; ω = 1, API forms, bad input, X/Y/Z, paste and model checks still run
        def no_reference(*args, **kwargs):
            pytest.skip("no reference extension linked into this WebUI (A1111: tests/webui/reference_ext, "
                        "forks: tests/webui/hosts/reference_ext)")
        wc.with_ref = no_reference
    _ensure_extra_loras(client)
    return client


def _ensure_extra_loras(client) -> None:
    names = {l["name"] for l in client.get("/sdapi/v1/loras")}
    if "pg_other_lora" in names:
        return
    harness = os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness")
    python = os.path.join(harness, "venv", "bin", "python")
    subprocess.run([python, os.path.join(HERE, "harness_models.py")], check=True)
    client.post("/sdapi/v1/refresh-loras", {})
    names = {l["name"] for l in client.get("/sdapi/v1/loras")}
    assert "pg_other_lora" in names, names


@pytest.fixture(scope="session")
def loaded_family(webui_url) -> str:
    """The harness model family loaded at the start of the run ('rand_sd15', 'rand_sd21v' or 'rand_sdxl')."""
    return wc.family_of(wc.Client(webui_url).get("/sdapi/v1/options")["sd_model_checkpoint"])


@pytest.fixture(scope="module", autouse=True)
def _family_matches(request):
    """Each test module is written for one model family (`FAMILY`, default SD 1.5): others skip it.

    Module scope, so that it runs before the module's own module-scoped fixtures: those switch checkpoints
    (an SD 1.5 DreamBooth fixture loading SD 1.5 into an SDXL WebUI and back OOM-killed it at 23.6 GB)."""
    if not os.environ.get("PG_WEBUI_URL"):
        return
    wanted = getattr(request.module, "FAMILY", "rand_sd15")
    wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    loaded = request.getfixturevalue("loaded_family")
    if loaded not in wanted:
        pytest.skip(f"written for {', '.join(wanted)}; the WebUI has {loaded or 'another model'} loaded")


def _ram_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 2**20


@pytest.fixture(scope="session")
def lora_mode(api, loaded_family):
    """SDXL in fp32 on a small machine: with any LoRA loaded, A1111's Lora extension backs up every weight it
    may merge into (a second copy of the model: +9 GB for SDXL, killed at 24 GB here). Such runs use the Lora
    extension's functional mode ("use old method": no merging, no backups); the setting comes back afterwards."""
    options = api.get("/sdapi/v1/options")
    if "lora_functional" not in options:  # the forks: their patcher backs up only the weights a LoRA patches
        yield False
        return
    before = options.get("lora_functional", False)
    wanted = before or (loaded_family == "rand_sdxl" and _ram_gib() < 40)
    if wanted != before:
        print(f"\n[tests/webui] {loaded_family} on {_ram_gib():.0f} GiB: Lora functional mode for this run")
        api.post("/sdapi/v1/options", {"lora_functional": wanted})
    yield wanted
    if wanted != before:
        api.post("/sdapi/v1/options", {"lora_functional": before})


def _settle_checkpoint_reload(client, family: str) -> None:
    """Reload the checkpoint once (to the family's DreamBooth checkpoint and back) before the baseline.

    Measured on A1111 v1.10.1 with SDXL in the Lora extension's functional mode, no PG job at all: after the
    first checkpoint reload, a LoRA image differs from the one made before it in exactly one channel of one
    pixel by 1/255, with every weight bit-identical (GET /pg-contract/digest) and the LoRA-off image
    identical; further reloads change nothing. The suite's DreamBooth modules reload checkpoints, so the
    baseline is taken after the host's first reload: what it compares is then PG's doing only."""
    dreambooth = f"{family}_dreambooth"
    titles = {m["model_name"]: m["title"] for m in client.get("/sdapi/v1/sd-models")}
    if dreambooth not in titles:
        return
    loaded = client.get("/sdapi/v1/options")["sd_model_checkpoint"]
    client.post("/sdapi/v1/options", {"sd_model_checkpoint": titles[dreambooth]})
    client.post("/sdapi/v1/options", {"sd_model_checkpoint": loaded})


def _weights_digest(client):
    """The loaded weights' hash per component (tests/webui/contract_ext), or None where the probe is not linked."""
    try:
        return client.get("/pg-contract/digest")["components"]
    except wc.ApiError:
        return None


@pytest.fixture(scope="session", autouse=True)
def model_untouched(request):
    """PG-off image (with a LoRA: its weight backups are where leftovers hide) before and after the suite, and,
    with tests/webui/contract_ext linked, a hash of every weight of the loaded model after each of them.

    The value is the "before" image (3 steps, wc.base_request()); tests reuse it as their PG-off image.
    """
    if not os.environ.get("PG_WEBUI_URL"):
        yield None
        return
    client = request.getfixturevalue("api")
    family = request.getfixturevalue("loaded_family")
    if request.getfixturevalue("lora_mode"):  # set before the first LoRA job
        _settle_checkpoint_reload(client, family)
    lora = wc.FAMILY_LORAS.get(family, ("rand_lora",))[0]
    request_off = wc.base_request(prompt=f"a photo of a cat <lora:{lora}:1>")
    before = client.txt2img(request_off)["pixels"]
    weights_before = _weights_digest(client)
    yield before
    after = client.txt2img(request_off)["pixels"]
    weights_after = _weights_digest(client)
    if weights_before is not None:
        changed = sorted(k for k in weights_before if weights_before[k] != weights_after.get(k))
        assert not changed, f"weights changed over the suite: {changed}"
    assert (before == after).all(), f"the model's PG-off output changed over the suite: {wc.diff(before, after)}"


@pytest.fixture(scope="session")
def off_image(model_untouched):
    return model_untouched


class _Cache(dict):
    pass


@pytest.fixture(scope="session")
def images():
    """Images shared between tests (e.g. the PG ω=0.5 image for the dict-args and paste tests)."""
    return _Cache()
