"""pg_ext never imports the WebUI (modules, gradio, launch, fastapi) — checked in a fresh interpreter."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = {"modules", "gradio", "launch", "fastapi", "networks", "network", "ldm", "sgm"}


def test_no_host_import_statement_in_pg_ext():
    for name in sorted(os.listdir(os.path.join(ROOT, "pg_ext"))):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "pg_ext", name), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    roots = {node.module.split(".")[0]}
                else:
                    continue
                assert not roots & HOST, f"pg_ext/{name} imports {roots & HOST}"


def test_importing_every_module_loads_no_host_module():
    code = ("import sys, pkgutil, importlib, pg_ext\n"
            "for m in pkgutil.iter_modules(pg_ext.__path__): importlib.import_module('pg_ext.' + m.name)\n"
            f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(HOST)!r})\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
