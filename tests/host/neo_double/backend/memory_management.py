"""Neo's memory manager keeps Forge 2's VRAM states (backend/memory_management.py:50-67): the Forge double's."""
from backend._forge_double import load

_forge = load("backend._forge_memory_management", "memory_management.py")
VRAMState = _forge.VRAMState
vram_state = VRAMState.NORMAL_VRAM
