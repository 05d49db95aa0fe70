"""Every host adapter implements pg_hosts.interface.HostAdapter, and the entry script asks nothing else of one.

The adapters' modules are read as source (ast), not imported: a1111.py imports the WebUI at its top."""
import ast
import inspect
import os
import re

import pytest

from pg_hosts import SUPPORTED, interface

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _defined(host: str) -> dict:
    """name -> parameter names (None for a constant) of what the adapter module defines or imports."""
    tree = ast.parse(open(os.path.join(ROOT, "pg_hosts", f"{host}.py"), encoding="utf-8").read())
    out: dict = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.Assign):
            out.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            source = _defined(node.module) if node.module in ("reforge", "comfy") else {}
            out.update({a.asname or a.name: source.get(a.name) for a in node.names})
    return out


def _protocol_params(name: str):
    member = getattr(interface.HostAdapter, name, None)
    if member is None or not callable(member):
        return None
    return [p for p in inspect.signature(member).parameters if p != "self"]


@pytest.mark.parametrize("host", SUPPORTED)
def test_each_adapter_has_every_member_with_the_interfaces_parameters(host):
    defined = _defined(host)
    for name in interface.MEMBERS:
        assert name in defined, f"pg_hosts/{host}.py lacks {name}"
        want = _protocol_params(name)
        if want is not None and defined[name] is not None:
            assert defined[name] == want, f"pg_hosts/{host}.py {name}{tuple(defined[name])}, interface {tuple(want)}"


def test_the_entry_script_asks_only_the_interface():
    source = open(os.path.join(ROOT, "scripts", "personalization_guidance.py"), encoding="utf-8").read()
    used = set(re.findall(r"\bHOST\.([A-Za-z_]+)", source))
    assert used <= set(interface.MEMBERS), sorted(used - set(interface.MEMBERS))
