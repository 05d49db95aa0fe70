"""Stand-in for modules/script_loading.py (A1111 v1.10.1): executes a file as a module named by its bare file name."""
import importlib.util
import os

loaded_scripts = {}


def load_module(path):
    """mirrors script_loading.load_module — module name is e.g. 'xyz_grid.py'; it is NOT put in sys.modules."""
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module
