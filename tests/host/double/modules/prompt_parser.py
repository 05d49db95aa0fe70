"""Prompt conditioning. Claims: a prompt's conditioning is a schedule, a list of entries with
`end_at_step` and `cond` ([T, D]); at step s the first entry with s <= end_at_step applies (the first
one if none does). Rows of one batch share a token count. "AND" splits a prompt into subprompts, each
with an optional ":weight" (default 1). The double has no [from:to:when] scheduling: one entry each.
"""
import re

import torch


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        self.is_negative_prompt, self.width, self.height = is_negative_prompt, width, height


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
    return [[Scheduled(steps, cond)] for cond in model.get_learned_conditioning(list(prompts))]


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
    schedules = iter(get_learned_conditioning(model, [t for parts in split for t, _ in parts], steps))
    return Multicond([[(next(schedules), w) for _, w in parts] for parts in split])


def _at(schedule, step):
    return next((e.cond for e in schedule if step <= e.end_at_step), schedule[0].cond)


def reconstruct_cond_batch(c, current_step):
    return torch.stack([_at(schedule, current_step) for schedule in c])


def reconstruct_multicond_batch(c, current_step):
    """(conds_list, rows): conds_list[i] = [(row index, weight) of image i's subprompts]."""
    rows, conds_list = [], []
    for parts in c.batch:
        conds_list.append([(len(rows) + j, w) for j, (_, w) in enumerate(parts)])
        rows += [_at(schedule, current_step) for schedule, _ in parts]
    return conds_list, torch.stack(rows)
