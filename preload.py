"""Run by the WebUI at start, before any extension's scripts: makes `import pg_ext` (and `pg_hosts`) work everywhere.

A1111 puts an extension's folder on `sys.path` only while that extension's scripts load, so another
extension's `from pg_ext import request_pg` would depend on the load order. Registering the package
here, under its own name, removes that dependency. Importing it costs nothing: `pg_ext` itself needs
only the standard library until its torch parts are used.
"""
import importlib.util
import os
import sys


def _register(package: str) -> None:
    """Put the extension's `package` into sys.modules under its own name (a no-op if it is there)."""
    if package in sys.modules:
        return
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), package)
    spec = importlib.util.spec_from_file_location(package, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[package]
        raise


# pg_ext: the host-free core other extensions import; pg_hosts: the host adapters the entry script
# imports (its package body only looks for the host's packages; the adapter itself loads with the script)
_register("pg_ext")
_register("pg_hosts")


def preload(parser) -> None:
    """PG adds no command-line flags."""
