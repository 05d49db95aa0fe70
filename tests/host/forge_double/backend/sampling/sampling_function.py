"""calc_cond_uncond_batch: cond entries (COND = 0) then uncond (UNCOND = 1), joined in reverse order into
as few calls as fit, each marked with cond_or_uncond (per chunk), cond/uncond_indices (per row) and the
step's per-row `sigmas` (the sampler's timestep, B rows); the call goes through
`model_options["model_function_wrapper"]` when there is one (MultiDiffusion's tiles)."""
import torch

COND, UNCOND = 0, 1


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    sums = [torch.zeros_like(x_in), torch.zeros_like(x_in)]
    weights = [0.0, 0.0]
    waiting = [(e, COND) for e in cond] + [(e, UNCOND) for e in (uncond or [])]
    limit = getattr(model, "chunks_per_call", None)
    while waiting:
        order = list(range(len(waiting)))[::-1]
        batch = order[:len(order) if limit is None else max(1, min(limit, len(order)))]
        taken = [waiting[i] for i in batch]
        for i in sorted(batch, reverse=True):
            waiting.pop(i)
        marks = [mark for _, mark in taken]
        b = x_in.shape[0]
        options = dict(model_options.get("transformer_options", {}))
        options["cond_or_uncond"] = marks[:]
        options["cond_indices"] = [c * b + i for c, m in enumerate(marks) if m == COND for i in range(b)]
        options["uncond_indices"] = [c * b + i for c, m in enumerate(marks) if m == UNCOND for i in range(b)]
        options["sigmas"] = timestep
        x, t = torch.cat([x_in] * len(taken)), torch.cat([timestep] * len(taken))
        c = {"c_crossattn": torch.cat([e["c_crossattn"] for e, _ in taken]), "transformer_options": options}
        wrapper = model_options.get("model_function_wrapper")
        if wrapper is not None:
            out = wrapper(model.apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": marks[:]})
        else:
            out = model.apply_model(x, t, **c)
        out = out.chunk(len(taken))
        for chunk, (entry, mark) in zip(out, taken):
            strength = entry.get("strength", 1.0)
            sums[mark] += chunk * strength
            weights[mark] += strength
    return tuple(s / w if w else s for s, w in zip(sums, weights))
