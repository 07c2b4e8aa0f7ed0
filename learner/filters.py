"""Which samples of a group of ``n`` contribute to the update (the "rejection" in rejection sampling).

Implements the filters of Xiong et al. (2025), "A Minimalist Approach to LLM Reasoning" (arXiv 2504.11343):

- ``raft``: keep the correct samples only (RAFT / RAFT++; THEORY.md section 3.1),
- ``mixed``: keep every sample of groups with ``0 < #correct < #valid`` (Reinforce-Rej, "remove both"),
- ``remove_all_wrong``: drop groups with no correct sample,
- ``remove_all_correct``: drop groups whose samples are all correct,
- ``none``: keep everything (Reinforce, GRPO).

"Correct" is decided by the verifier's status (``Status.CORRECT``), never by comparing reward values:
the reward map is configurable ({0,1}, {-1,+1}, shaped), the status is not.

``valid`` marks samples the verifier actually judged (a verifier ERROR is not "wrong"): invalid samples are
never kept and do not count in a group's size, so a group of 3 correct + 1 error is "all correct".
A group with no valid sample is "empty" and dropped by every mode.

Left out: the original RAFT's "keep only the best of K under a reward model" (with a binary verifier every
correct sample ties for best, which is the ``raft`` filter).
"""

from __future__ import annotations

import torch
from torch import Tensor
from winnow.learner.algo import FILTER_MODES, FilterMode  # noqa: F401  (defined with the config)


def group_stats(correct: Tensor, *, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-group counts of ``correct (G, n)`` bool over the ``valid (G, n)`` samples (default: all).

    Returns ``num_correct``, ``num_valid`` (G,) long and ``all_correct``, ``all_wrong``, ``mixed``,
    ``empty`` (G,) bool; exactly one of the four flags is set for each group.
    """
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    correct = correct & valid
    num_correct = correct.sum(dim=-1)  # (G,)
    num_valid = valid.sum(dim=-1)  # (G,)
    empty = num_valid == 0
    all_correct = (num_correct == num_valid) & ~empty
    all_wrong = (num_correct == 0) & ~empty
    mixed = (num_correct > 0) & (num_correct < num_valid)
    return {
        "num_correct": num_correct,
        "num_valid": num_valid,
        "all_correct": all_correct,
        "all_wrong": all_wrong,
        "mixed": mixed,
        "empty": empty,
    }


def sample_keep_mask(correct: Tensor, mode: FilterMode, *, valid: Tensor | None = None) -> Tensor:
    """Which samples contribute: ``correct (G, n)`` bool -> keep ``(G, n)`` bool.

    ``valid (G, n)`` (default all) marks samples the verifier judged; invalid samples are never kept.
    """
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    s = group_stats(correct, valid=valid)
    if mode == "none":
        group_keep = ~s["empty"]
    elif mode == "raft":
        return correct & valid
    elif mode == "mixed":
        group_keep = s["mixed"]
    elif mode == "remove_all_wrong":
        group_keep = ~s["all_wrong"] & ~s["empty"]
    elif mode == "remove_all_correct":
        group_keep = ~s["all_correct"] & ~s["empty"]
    else:
        raise ValueError(f"unknown filter mode {mode!r}; valid: {', '.join(FILTER_MODES)}")
    return group_keep[:, None] & valid  # (G, n)
