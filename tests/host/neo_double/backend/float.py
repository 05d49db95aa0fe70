"""stochastic_rounding(value, dtype, seed): an offline merge written back to its stored dtype, seeded by the key
(Neo `backend/float.py`, used by `ModelPatcher.patch_weight_to_device`, backend/patcher/base.py:486-487)."""
from fork_objects import seeded_rounding as stochastic_rounding  # noqa: F401
