"""stochastic_rounding(value, dtype, seed): a merged weight written back to its stored dtype, seeded by the key
(reForge `ldm_patched/float.py`, used by `ModelPatcher.patch_weight_to_device`, model_patcher.py:581)."""
from fork_objects import seeded_rounding as stochastic_rounding  # noqa: F401
