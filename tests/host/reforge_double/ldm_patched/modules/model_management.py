"""The memory manager's VRAM state as the adapters read it: `VRAMState` and the module's `vram_state`
(reForge ldm_patched/modules/model_management.py:30-44), set from --lowvram/--novram."""
import enum


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


vram_state = VRAMState.NORMAL_VRAM
