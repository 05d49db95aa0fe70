"""PG's fork adapters on each fork's OWN code, no server (tests/webui/hosts/probe_adapter.py and probe_loader.py),
run from pytest: opt-in with PG_FORK_PROBES=1 (each probe imports the fork in its harness venv, ~30-60 s on 2
cores), skipped for a fork whose harness (`tests/webui/hosts/<host>/setup.sh`) is not set up here."""
import os
import subprocess

import pytest

HOSTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hosts")
HARNESS = os.environ.get("FORK_HARNESS") or os.path.join(os.path.expanduser("~"), ".cache", "pg-fork-harness")
PROBES = [("probe_adapter.sh", h) for h in ("reforge", "forge", "forge_neo")] + [("probe_loader.sh", "forge_neo")]


@pytest.mark.parametrize("probe, host", PROBES)
def test_probe_on_the_forks_own_code(probe, host):
    if os.environ.get("PG_FORK_PROBES") != "1":
        pytest.skip("opt-in: PG_FORK_PROBES=1 runs the probes in the fork harnesses")
    if not os.access(os.path.join(HARNESS, host, "venv", "bin", "python"), os.X_OK) \
            or not os.path.isfile(os.path.join(HARNESS, host, "webui", ".pg_export")):
        pytest.skip(f"no {host} harness under {HARNESS} (run tests/webui/hosts/{host}/setup.sh)")
    done = subprocess.run(["bash", os.path.join(HOSTS_DIR, probe), host], capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert done.returncode == 0 and lines and not any(line.startswith("FAIL") for line in lines), \
        "\n".join(lines) + "\n" + done.stderr[-3000:]
