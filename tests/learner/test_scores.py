"""Scalar scores from the verifier in the learner's reward map (issue 27 item 2; docs/algorithms.md section 9).

A sample with a score: reward = score, correct iff score >= algo.score_threshold (RAFT's acceptance, Reinforce-Rej's
mixed groups, acceptance_rate). A sample without one: the status map, as always. ERROR stays invalid whatever
the score; an infinite score is invalid.
"""

from __future__ import annotations

import math

import pytest
import torch

from winnow.learner.algo import AlgoConfig, correct_mask, reward_from_status
from winnow.learner.batch import GroupData, SampleData, collate, group_from_proto
from winnow.learner.objective import judge_samples, prepare_batch_signals
from winnow.v1 import messages_pb2
from winnow.verdict import Status

C, W, E, N = int(Status.CORRECT), int(Status.WRONG), int(Status.ERROR), int(Status.NO_ANSWER)
nan = math.nan


def test_reward_map_uses_the_score_when_present() -> None:
    cfg = AlgoConfig(preset="grpo")
    statuses = torch.tensor([[C, W, E, W, N]])
    scores = torch.tensor([[0.5, nan, 0.9, 1.2, math.inf]])
    rewards, valid = reward_from_status(statuses, cfg, scores)
    # 0.5 (score), WRONG without score -> reward_wrong 0, ERROR -> invalid (0), 1.2 (score), inf -> invalid
    assert rewards[0].tolist() == pytest.approx([0.5, 0.0, 0.0, 1.2, 0.0])
    assert valid.tolist() == [[True, True, False, True, False]]
    # correct: 0.5 < 1.0; WRONG; invalid; 1.2 >= 1.0; invalid
    assert correct_mask(statuses, valid, cfg, scores).tolist() == [[False, False, False, True, False]]
    assert correct_mask(statuses, valid, AlgoConfig(preset="grpo", score_threshold=0.5), scores).tolist() == [
        [True, False, False, True, False]]


def test_without_scores_nothing_changes() -> None:
    cfg = AlgoConfig(preset="reinforce_rej")
    statuses = torch.tensor([[C, W, N, C], [C, C, C, C]])
    a = prepare_batch_signals(statuses, cfg)
    b = prepare_batch_signals(statuses, cfg, scores=torch.full((2, 4), nan))
    for key in ("rewards", "correct", "valid", "keep", "advantages", "sample_weight"):
        assert torch.equal(a[key], b[key]), key
    assert a["metrics"] == b["metrics"]


def test_raft_accepts_scores_at_or_above_the_threshold() -> None:
    cfg = AlgoConfig(preset="raft", score_threshold=1.0)
    statuses = torch.tensor([[C, W, W, C]])
    scores = torch.tensor([[1.5, 0.5, 1.0, 0.25]])  # a status never overrides a score
    sig = prepare_batch_signals(statuses, cfg, scores=scores)
    assert sig["keep"].tolist() == [[True, False, True, False]]  # 1.5 >= 1, 0.5 < 1, 1.0 >= 1, 0.25 < 1
    # RAFT's advantage max(r, 0) on the kept samples: 1.5 and 1.0
    assert sig["advantages"][0].tolist() == pytest.approx([1.5, 0.0, 1.0, 0.0])
    assert sig["metrics"]["acceptance_rate"] == pytest.approx(0.5)  # 2 accepted of 4 valid
    assert sig["metrics"]["reward_mean"] == pytest.approx((1.5 + 0.5 + 1.0 + 0.25) / 4)


def test_reinforce_rej_mixed_groups_by_threshold() -> None:
    statuses = torch.full((3, 3), W)
    scores = torch.tensor([[0.2, 0.9, 0.4],    # none >= 0.8 ... one with 0.9: mixed at 0.8
                           [0.9, 1.0, 0.85],   # all >= 0.8: all "correct", dropped
                           [0.1, 0.0, 0.3]])   # none: dropped
    sig = prepare_batch_signals(statuses, AlgoConfig(preset="reinforce_rej", score_threshold=0.8), scores=scores)
    assert sig["keep"].tolist() == [[True] * 3, [False] * 3, [False] * 3]
    assert sig["advantages"][0].tolist() == pytest.approx([0.2, 0.9, 0.4])  # raw r on the mixed group
    assert sig["metrics"]["groups_mixed"] == 1 and sig["metrics"]["groups_all_correct"] == 1
    assert sig["metrics"]["groups_all_wrong"] == 1
    # at threshold 0.95 group 0 has no correct sample and group 1 one (1.0): only group 1 is mixed
    sig = prepare_batch_signals(statuses, AlgoConfig(preset="reinforce_rej", score_threshold=0.95), scores=scores)
    assert sig["keep"].any(dim=-1).tolist() == [False, True, False]


def test_grpo_normalises_scores() -> None:
    statuses = torch.full((1, 4), W)
    scores = torch.tensor([[0.0, 0.5, 1.0, 1.5]])
    sig = prepare_batch_signals(statuses, AlgoConfig(preset="grpo"), scores=scores)
    # mean 0.75, unbiased std sqrt(((.75^2 + .25^2) * 2) / 3) = sqrt(1.25 / 3) = 0.6455
    std = math.sqrt(1.25 / 3)
    assert sig["advantages"][0].tolist() == pytest.approx([(s - 0.75) / (std + 1e-6) for s in (0.0, 0.5, 1.0, 1.5)],
                                                          rel=1e-5)


def _group(statuses: list[int], scores: list[float | None], rid: str = "r0") -> GroupData:
    return GroupData("p", rid, [1, 2], [SampleData([3], [-0.5], [0], s, score=x) for s, x in zip(statuses, scores,
                                                                                               strict=True)])


def test_collate_and_judge_carry_scores() -> None:
    batch = collate([_group([C, W], [None, 0.25])], pad_id=0)
    assert batch.scores is not None and math.isnan(batch.scores[0, 0]) and batch.scores[0, 1] == 0.25
    assert collate([_group([C, W], [None, None])], pad_id=0).scores is None
    j = judge_samples([_group([W, W], [1.0, 0.25])], AlgoConfig(preset="raft"))
    assert j.kept == [[True, False]] and j.rewards[0] == pytest.approx([1.0, 0.25])


def test_old_generators_groups_read_without_scores() -> None:
    """A ScoredGroup of a generator that predates Sample.score: every score is None (the status map)."""
    msg = messages_pb2.ScoredGroup(request_id="r", prompt_token_ids=[1], policy_version=0, samples=[
        messages_pb2.Sample(response_token_ids=[2], behaviour_logprobs=[-0.1], status=C)])
    g = group_from_proto(messages_pb2.ScoredGroup.FromString(msg.SerializeToString()), 1)
    assert g.samples[0].score is None
    msg.samples[0].score = 0.0  # an explicit 0 is a score, not "none"
    g = group_from_proto(messages_pb2.ScoredGroup.FromString(msg.SerializeToString()), 1)
    assert g.samples[0].score == 0.0
    msg.samples[0].score = math.nan
    with pytest.raises(ValueError, match="not finite"):
        group_from_proto(messages_pb2.ScoredGroup.FromString(msg.SerializeToString()), 1)
