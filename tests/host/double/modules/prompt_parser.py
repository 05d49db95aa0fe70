"""Prompt conditioning. Claims: a prompt's conditioning is a schedule, a list of entries with
`end_at_step` and `cond` ([T, D]); at step s the first entry with s <= end_at_step applies (the first
one if none does). Rows of one batch share a token count. "AND" splits a prompt into subprompts, each
with an optional ":weight" (default 1). The double has no [from:to:when] scheduling: one entry each.
The model is handed the prompts as an SdConditioning carrying width, height and is_negative_prompt (a
list given with `copy_from` takes them from there). A model whose conditioning is a dict of batched
tensors (SDXL: "crossattn" [N, T, C], "vector" [N, D]) gives dict entries ({key: row}); a batch of them is
rebuilt as a DictWithShape (a dict of stacked rows whose `.shape` is its crossattn's).
"""
import re

import torch


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        source = prompts if copy_from is None else copy_from
        self.is_negative_prompt = bool(is_negative_prompt or getattr(source, "is_negative_prompt", False))
        self.width = width if width else getattr(source, "width", None)
        self.height = height if height else getattr(source, "height", None)


class DictWithShape(dict):
    """Batched dict conditioning; `.shape` is its crossattn's, so the denoiser can compare token counts."""

    @property
    def shape(self):
        return self["crossattn"].shape


class Scheduled:
    def __init__(self, end_at_step, cond):
        self.end_at_step, self.cond = end_at_step, cond


class Multicond:
    """batch[i] = [(schedule, weight) for each subprompt of prompt i]."""

    def __init__(self, batch):
        self.batch = batch


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    if not len(prompts):
        return []
    conds = model.get_learned_conditioning(SdConditioning(list(prompts), copy_from=prompts))
    if isinstance(conds, dict):
        return [[Scheduled(steps, {k: v[i] for k, v in conds.items()})] for i in range(len(prompts))]
    return [[Scheduled(steps, cond)] for cond in conds]


def _subprompts(prompt):
    out = []
    for part in re.split(r"\bAND\b", prompt):
        text, colon, number = part.rpartition(":")
        try:
            out.append((text, float(number)) if colon else (part, 1.0))
        except ValueError:
            out.append((part, 1.0))
    return out


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    split = [_subprompts(p) for p in prompts]
    flat = SdConditioning([t for parts in split for t, _ in parts], copy_from=prompts)
    schedules = iter(get_learned_conditioning(model, flat, steps))
    return Multicond([[(next(schedules), w) for _, w in parts] for parts in split])


def _at(schedule, step):
    return next((e.cond for e in schedule if step <= e.end_at_step), schedule[0].cond)


def _stack(rows):
    if isinstance(rows[0], dict):
        return DictWithShape({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    return torch.stack(rows)


def reconstruct_cond_batch(c, current_step):
    return _stack([_at(schedule, current_step) for schedule in c])


def reconstruct_multicond_batch(c, current_step):
    """(conds_list, rows): conds_list[i] = [(row index, weight) of image i's subprompts]."""
    rows, conds_list = [], []
    for parts in c.batch:
        conds_list.append([(len(rows) + j, w) for j, (_, w) in enumerate(parts)])
        rows += [_at(schedule, current_step) for schedule, _ in parts]
    return conds_list, _stack(rows)
