"""Host detection and the adapter layout: the entry script asks an adapter, the host is found once.

Detection runs in fresh interpreters whose sys.path holds empty stand-in packages named like each
host's top-level packages (no host code: only the names matter to `pg_hosts.detect`).
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "personalization_guidance.py")


def _detect_with(tmp_path, packages, files=None):
    for name in packages:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    for path, text in (files or {}).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    code = "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import pg_hosts; print(pg_hosts.detect())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), ROOT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


REFORGE_LORA = {"ldm_patched/modules/lora.py": "def load_lora(lora, to_load):\n    pass\n\n\ndef calculate_weight(patches, weight, key):\n    pass\n"}
CLASSIC_LORA = {"ldm_patched/modules/lora.py": "def load_lora(lora, to_load):\n    pass\n",
                "ldm_patched/modules/model_patcher.py": "class ModelPatcher:\n    def calculate_weight(self, patches, weight, key):\n        pass\n"}


@pytest.mark.parametrize("files, version, host", [
    (REFORGE_LORA, "1.0.0v2-v1.10.1RC", "reforge"),
    (CLASSIC_LORA, "classic", "forge_classic"),
    (CLASSIC_LORA, "0.0.17v1.8.0rc-latest-276-g29be1da7", "forge_1"),
])
def test_ldm_patched_hosts_are_told_apart_by_the_merge_pg_needs(tmp_path, files, version, host):
    """Issue 17 item 4: Forge Classic and Forge 1 were taken for reForge, then PG was off on every pass."""
    files = {**files, "modules_forge/forge_version.py": f"version = '{version}'\n"}
    assert _detect_with(tmp_path, ("modules_forge", "ldm_patched"), files) == host


@pytest.mark.parametrize("name", ["forge_classic", "forge_1"])
def test_loading_an_unsupported_host_fails_with_its_name(name):
    import pg_hosts

    with pytest.raises(pg_hosts.UnsupportedHost, match="does not support Forge (Classic|1)"):
        pg_hosts.load(name)


@pytest.mark.parametrize("packages, host", [
    ((), "a1111"),
    (("modules_forge", "backend"), "forge"),
    (("ldm_patched",), "a1111"),  # ldm_patched alone (another program's copy) is not reForge
])
def test_detect_names_the_host_by_its_packages(tmp_path, packages, host):
    assert _detect_with(tmp_path, packages) == host


# modules_forge/forge_version.py as each fork writes it: Neo (namespace package, no __init__.py), Forge 2
@pytest.mark.parametrize("files, host", [
    ({"modules_forge/forge_version.py": 'version = "neo"\nrelease = "2.26"\n', "backend/__init__.py": ""}, "forge_neo"),
    ({"modules_forge/forge_version.py": "version = '2.0.1v1.10.1'\n", "backend/__init__.py": ""}, "forge"),
    ({"modules_forge/forge_version.py": 'version = "neo"\n', "ldm_patched/__init__.py": "", **REFORGE_LORA}, "reforge"),
])
def test_forge_neo_is_told_from_forge_by_its_version_file(tmp_path, files, host):
    assert _detect_with(tmp_path, (), files) == host


def test_neo_detection_imports_nothing_of_the_host(tmp_path):
    files = {"modules_forge/__init__.py": "raise SystemExit('imported')",
             "modules_forge/forge_version.py": "raise SystemExit('imported')\nversion = 'neo'\n",
             "backend/__init__.py": "raise SystemExit('imported')"}
    assert _detect_with(tmp_path, (), files) == "forge_neo"


def test_detection_imports_nothing_of_the_host(tmp_path):
    (tmp_path / "modules_forge").mkdir()
    (tmp_path / "modules_forge" / "__init__.py").write_text("raise SystemExit('imported')")
    (tmp_path / "ldm_patched").mkdir()
    (tmp_path / "ldm_patched" / "__init__.py").write_text("raise SystemExit('imported')")
    (tmp_path / "ldm_patched" / "modules").mkdir()
    (tmp_path / "ldm_patched" / "modules" / "lora.py").write_text("raise SystemExit('imported')\ndef calculate_weight(p, w, k):\n    pass\n")
    assert _detect_with(tmp_path, ()) == "reforge"


def test_unknown_host_names_are_refused():
    import pg_hosts

    with pytest.raises(ValueError, match="'neo'"):
        pg_hosts.load("neo")


def test_entry_script_reads_no_host_internals_itself():
    """UNet module, Lora extension, replacement UNets: asked of the adapter, not read in the script."""
    source = open(SCRIPT, encoding="utf-8").read()
    for name in ("diffusion_model", "sd_unet", "loaded_networks\"", "sys.modules", "forge_objects", "lowvram"):
        assert name not in source, name
    imported = {n.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                and node.module == "modules" for n in node.names}
    assert "sd_unet" not in imported


def test_preload_registers_the_adapter_package_without_torch(tmp_path):
    code = ("import importlib.util, os, sys\n"
            "root = sys.argv[1]\n"
            "spec = importlib.util.spec_from_file_location('preload.py', os.path.join(root, 'preload.py'))\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "import pg_hosts\n"
            "assert os.path.dirname(pg_hosts.__file__) == os.path.join(root, 'pg_hosts'), pg_hosts.__file__\n"
            "assert 'torch' not in sys.modules\n"
            "print(pg_hosts.detect())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a1111"
