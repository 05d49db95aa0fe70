"""The batched CFG call: conds = [cond, uncond], entries joined in reverse order, every call marked."""
import torch


def _chunks_per_call(model, available):
    limit = getattr(model, "chunks_per_call", None)
    return available if limit is None else max(1, min(limit, available))


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    """Per index of `conds`: the weighted mean of its entries' predictions (an entry: {"c_crossattn", "strength"})."""
    sums = [torch.zeros_like(x_in) for _ in conds]
    weights = [0.0 for _ in conds]
    waiting = [(entry, index) for index, entries in enumerate(conds) if entries is not None for entry in entries]
    while waiting:
        tokens = waiting[0][0]["c_crossattn"].shape[1]
        fitting = [i for i, (entry, _) in enumerate(waiting) if entry["c_crossattn"].shape[1] == tokens]
        fitting.reverse()  # the host takes the last compatible entries first: uncond before cond
        batch = fitting[:_chunks_per_call(model, len(fitting))]
        taken = [waiting[i] for i in batch]
        for i in sorted(batch, reverse=True):
            waiting.pop(i)
        marks = [index for _, index in taken]
        options = dict(model_options.get("transformer_options", {}))
        options["cond_or_uncond"] = marks[:]
        options["sigmas"] = timestep  # samplers.py:324: the step's per-row timestep next to the marks
        rows_x = torch.cat([x_in] * len(taken))
        out = model.apply_model(rows_x, torch.cat([timestep] * len(taken)),
                                c_crossattn=torch.cat([entry["c_crossattn"] for entry, _ in taken]),
                                transformer_options=options).chunk(len(taken))
        for chunk, (entry, index) in zip(out, taken):
            strength = entry.get("strength", 1.0)
            sums[index] += chunk * strength
            weights[index] += strength
    return [s / w if w else s for s, w in zip(sums, weights)]


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
    if cond_scale == 1.0:
        uncond = None  # the cond-only step (NGMS, skip early CFG, or CFG 1)
    cond_pred, uncond_pred = calc_cond_batch(model, [cond, uncond], x, timestep, model_options)
    if uncond is None:
        return cond_pred
    return uncond_pred + (cond_pred - uncond_pred) * cond_scale
