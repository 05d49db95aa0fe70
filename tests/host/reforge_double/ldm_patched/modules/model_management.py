"""reForge's memory manager keeps the same VRAM states as Forge's (ldm_patched/modules/model_management.py:30-44):
the Forge double's enum, under reForge's module name."""
import importlib.util
import os

_FORGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "forge_double", "backend",
                      "memory_management.py")
_spec = importlib.util.spec_from_file_location("_reforge_double_vram_states", _FORGE)
_forge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_forge)
VRAMState = _forge.VRAMState
vram_state = VRAMState.NORMAL_VRAM
