"""Another extension can `from pg_ext import request_pg` whatever order the WebUI loads extensions in.

The WebUI runs every extension's `preload.py` at start (A1111: `script_loading.preload_extensions`, a
module named after the file, then `preload(parser)`), before any extension's scripts, and puts an
extension's folder on `sys.path` only while its own scripts load. So the check runs in a fresh
interpreter whose `sys.path` does not hold this checkout.
"""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECK = textwrap.dedent("""
    import argparse, importlib.util, os, sys, types
    root = sys.argv[1]
    assert root not in sys.path and os.getcwd() != root
    spec = importlib.util.spec_from_file_location("preload.py", os.path.join(root, "preload.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.preload(argparse.ArgumentParser())
    from pg_ext import request_pg
    import pg_ext
    assert os.path.dirname(pg_ext.__file__) == os.path.join(root, "pg_ext"), pg_ext.__file__
    assert "torch" not in sys.modules, "preload must not import torch"
    p = types.SimpleNamespace()
    settings = request_pg(p, omega=0.25, loras="subject")
    assert settings.enabled and settings.omega == 0.25 and settings.loras == ("subject",)
    from pg_ext.branch import WeakBranch  # the torch parts load on use, from the same package
    assert pg_ext.WeakBranch is WeakBranch
    print("ok")
""")


def test_preload_makes_pg_ext_importable_from_any_extension(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", CHECK, ROOT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
