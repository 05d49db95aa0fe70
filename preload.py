"""Run by the WebUI at start, before any extension's scripts: makes `import pg_ext` work everywhere.

A1111 puts an extension's folder on `sys.path` only while that extension's scripts load, so another
extension's `from pg_ext import request_pg` would depend on the load order. Registering the package
here, under its own name, removes that dependency. Importing it costs nothing: `pg_ext` itself needs
only the standard library until its torch parts are used.
"""
import importlib.util
import os
import sys


def _register_core() -> None:
    if "pg_ext" in sys.modules:
        return
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pg_ext")
    spec = importlib.util.spec_from_file_location("pg_ext", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pg_ext"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["pg_ext"]
        raise


_register_core()


def preload(parser) -> None:
    """PG adds no command-line flags."""
