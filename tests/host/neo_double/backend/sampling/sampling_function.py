"""calc_cond_uncond_batch: Forge 2's, unchanged in Neo (reverse order, as few calls as fit, cond_or_uncond)."""
from backend._forge_double import load

calc_cond_uncond_batch = load("backend.sampling._forge_sampling_function", "sampling/sampling_function.py").calc_cond_uncond_batch
