"""Row identification for every way A1111 batches CFG's rows (modules/sd_samplers_cfg_denoiser.py)."""
import torch

from pg_ext.rows import StepRows, WeakRows


def conds(rows, tokens=77, dim=8, seed=0):
    return torch.randn(rows, tokens, dim, generator=torch.Generator().manual_seed(seed))


def classify(step, calls):
    return torch.cat([step.weak_rows(c) for c in calls]).tolist()


def test_one_batched_call_batch2_and_prompt():
    """B=2, prompt 'a AND b': rows [x0·a, x0·b, x1·a, x1·b, x0·u, x1·u]."""
    cond, uncond = conds(4), conds(2, seed=1)
    step = StepRows(cond, uncond)
    assert classify(step, [torch.cat([cond, uncond])]) == [False] * 4 + [True] * 2


def test_batch_cond_uncond_off_chunks_mix_cond_and_uncond():
    """Chunks of B=2 over R+B=5 rows (AND with 3 parts for B=... here R=3): a chunk holds cond and uncond."""
    cond, uncond = conds(3), conds(2, seed=1)
    rows = torch.cat([cond, uncond])
    step = StepRows(cond, uncond)
    assert classify(step, [rows[0:2], rows[2:4], rows[4:5]]) == [False, False, False, True, True]


def test_unequal_lengths_padded_or_separate_call():
    cond, uncond = conds(2, tokens=154), conds(2, tokens=77, seed=1)
    step = StepRows(cond, uncond)
    assert classify(step, [cond, uncond]) == [False, False, True, True]  # separate uncond call
    padded = torch.cat([uncond, conds(2, seed=9)], dim=1)  # pad_cond_uncond: empty-prompt chunk appended
    step = StepRows(cond, uncond)
    assert classify(step, [torch.cat([cond, padded])]) == [False, False, True, True]
    step = StepRows(conds(2, tokens=77, seed=3), conds(2, tokens=154, seed=4))
    truncated = step.uncond[:, :77]  # pad_cond_uncond_v0 truncates the longer uncond
    assert classify(step, [torch.cat([step.cond, truncated])]) == [False, False, True, True]


def test_skipped_uncond_steps_have_no_weak_rows():
    """NGMS / skip early CFG: x_in loses the last B rows, so only cond rows reach the UNet."""
    cond, uncond = conds(2), conds(2, seed=1)
    assert classify(StepRows(cond, uncond), [cond]) == [False, False]


def test_prompt_equal_to_negative_falls_back_to_position():
    same = conds(1)
    step = StepRows(same.repeat(2, 1, 1), same.repeat(2, 1, 1))
    assert classify(step, [torch.cat([same] * 4)]) == [False, False, True, True]
    step = StepRows(same.repeat(2, 1, 1), same.repeat(2, 1, 1))
    assert classify(step, [torch.cat([same] * 2)]) == [False, False]  # skipped uncond: cond only


def test_tiles_repeat_the_row_layout():
    """Tiled Diffusion concatenates whole [cond, uncond] layouts tile-major."""
    cond, uncond = conds(1), conds(1, seed=1)
    step = StepRows(cond, uncond)
    assert classify(step, [torch.cat([cond, uncond] * 3)]) == [False, True] * 3


def test_controlnet_marked_conditioning_is_matched_with_its_mark():
    cond, uncond = conds(2), conds(2, seed=1)
    mark = lambda t, v: torch.cat([torch.full_like(t[:, :1], v), t], dim=1)
    step = StepRows(mark(cond, 1024.0), mark(uncond, -1024.0))
    assert classify(step, [torch.cat([mark(cond, 1024.0), mark(uncond, -1024.0)])]) == [False, False, True, True]


def test_foreign_rows_are_left_alone():
    step = StepRows(conds(1), conds(1, seed=1))
    assert classify(step, [conds(2, seed=5)]) == [False, False]


def _rows_of(layout):
    """The weak row numbers a layout describes, read back for the assertions."""
    if layout is None:
        return None
    if layout.is_block:
        return list(range(layout.first, layout.first + layout.count))
    return layout.weak.tolist()


def test_layout_expands_b_major_and_rejects_misfits():
    cpu = torch.device("cpu")
    rows = WeakRows.from_mask(torch.tensor([True, False]))
    assert _rows_of(rows.layout(2, cpu)) == [0]
    assert _rows_of(rows.layout(6, cpu)) == [0, 1, 2]
    assert rows.layout(6, cpu).is_block
    assert rows.layout(5, cpu) is None
    assert WeakRows.from_mask(torch.tensor([False, False])).layout(2, cpu) is None


def test_layout_of_interleaved_rows_has_both_index_sets():
    cpu = torch.device("cpu")
    rows = WeakRows.from_mask(torch.tensor([False, True, False, True]))
    at = rows.layout(4, cpu)
    assert not at.is_block and at.weak.tolist() == [1, 3] and at.kept.tolist() == [0, 2]
    at = rows.layout(8, cpu)  # each row repeated twice, b-major
    assert at.weak.tolist() == [2, 3, 6, 7] and at.kept.tolist() == [0, 1, 4, 5]
    assert rows.layout(4, cpu) is rows.layout(4, cpu)  # built once per call


def test_every_row_is_one_block_of_any_size():
    at = WeakRows.every_row().layout(7, torch.device("cpu"))
    assert at.is_block and (at.first, at.count) == (0, 7)
