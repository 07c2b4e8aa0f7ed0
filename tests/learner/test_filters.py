"""Filters: each mode against hand-written masks and against a plain Python loop."""

import itertools

import pytest
import torch

from winnow.learner.filters import FILTER_MODES, group_stats, sample_keep_mask

# 4 groups of n=4: mixed (2/4), all correct, all wrong, mixed (1/4)
CORRECT = torch.tensor(
    [
        [1, 0, 1, 0],
        [1, 1, 1, 1],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ],
    dtype=torch.bool,
)


def test_group_stats_counts():
    s = group_stats(CORRECT)
    assert s["num_correct"].tolist() == [2, 4, 0, 1]
    assert s["num_valid"].tolist() == [4, 4, 4, 4]
    assert s["all_correct"].tolist() == [False, True, False, False]
    assert s["all_wrong"].tolist() == [False, False, True, False]
    assert s["mixed"].tolist() == [True, False, False, True]
    assert s["empty"].tolist() == [False] * 4


@pytest.mark.parametrize(
    "mode, expected_groups",
    [
        ("none", [1, 1, 1, 1]),
        ("mixed", [1, 0, 0, 1]),  # Reinforce-Rej: remove both all-correct and all-wrong
        ("remove_all_wrong", [1, 1, 0, 1]),
        ("remove_all_correct", [1, 0, 1, 1]),
    ],
)
def test_group_filters(mode, expected_groups):
    keep = sample_keep_mask(CORRECT, mode)
    assert keep.tolist() == [[bool(g)] * 4 for g in expected_groups]


def test_raft_keeps_exactly_the_correct_samples():
    assert torch.equal(sample_keep_mask(CORRECT, "raft"), CORRECT)


def test_invalid_samples_never_kept_and_do_not_count():
    valid = torch.ones_like(CORRECT)
    valid[0, 1] = False  # group 0: 1,E,1,0 -> still mixed (2 of 3 valid)
    valid[3, :3] = False  # group 3: E,E,E,1 -> all correct among valid
    s = group_stats(CORRECT, valid=valid)
    assert s["num_valid"].tolist() == [3, 4, 4, 1]
    assert s["mixed"].tolist() == [True, False, False, False]
    assert s["all_correct"].tolist() == [False, True, False, True]
    keep = sample_keep_mask(CORRECT, "mixed", valid=valid)
    assert keep.tolist()[0] == [True, False, True, True]
    assert keep[1:].sum() == 0
    assert not sample_keep_mask(CORRECT, "none", valid=valid)[0, 1]
    # a group with no valid sample is "empty" and dropped by every mode
    valid2 = torch.zeros_like(CORRECT)
    for mode in FILTER_MODES:
        assert sample_keep_mask(CORRECT, mode, valid=valid2).sum() == 0
    assert group_stats(CORRECT, valid=valid2)["empty"].all()


def _loop_keep(correct, valid, mode):
    out = []
    for row_c, row_v in zip(correct.tolist(), valid.tolist(), strict=True):
        nv = sum(row_v)
        nc = sum(c and v for c, v in zip(row_c, row_v, strict=True))
        if mode == "raft":
            out.append([c and v for c, v in zip(row_c, row_v, strict=True)])
            continue
        group = {
            "none": nv > 0,
            "mixed": 0 < nc < nv,
            "remove_all_wrong": nv > 0 and nc > 0,
            "remove_all_correct": nv > 0 and nc < nv,
        }[mode]
        out.append([group and v for v in row_v])
    return out


@pytest.mark.parametrize("mode", FILTER_MODES)
def test_vectorised_matches_loop_on_every_group_of_three(mode):
    # all 3^3 assignments of (correct, wrong, invalid) to a group of n=3
    rows = list(itertools.product([0, 1, 2], repeat=3))
    codes = torch.tensor(rows)
    correct, valid = codes == 1, codes != 2
    assert sample_keep_mask(correct, mode, valid=valid).tolist() == _loop_keep(correct, valid, mode)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown filter mode 'best'"):
        sample_keep_mask(CORRECT, "best")
