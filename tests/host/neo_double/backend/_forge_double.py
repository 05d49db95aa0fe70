"""Neo's sampling function and KModel are Forge 2's (same contract): the Forge double's files, loaded here
under Neo's module names so that one double states them once."""
import importlib.util
import os

FORGE_DOUBLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "forge_double", "backend")


def load(module_name: str, relative_path: str):
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(FORGE_DOUBLE, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
