"""Overlong responses (algo.overlong): DAPO's soft penalty by hand, drop_truncated through the batch signals,
the sample log and a training step."""

from __future__ import annotations

import pytest
import torch

from winnow.config import ConfigError
from winnow.learner.algo import AlgoConfig, overlong_penalty
from winnow.learner.objective import judge_samples, prepare_batch_signals

from .conftest import CORRECT, WRONG, make_groups

C, W = CORRECT, WRONG
STATUSES = torch.tensor([[C, W, C, W], [C, C, C, W]])
#                       group 0: samples 1 and 2 truncated; group 1: sample 3 truncated
FINISH = ["stop", "length", "length", "stop", "stop", "stop", "stop", "length"]
LENGTHS = torch.tensor([5, 10, 10, 7, 6, 8, 9, 10])


def test_soft_penalty_hand_values():
    # L_max 10, L_cache 4: no penalty up to 6 tokens, then (6 - |y|) / 4: 7 -> -0.25, 9 -> -0.75, 10 -> -1;
    # beyond L_max -1 (DAPO eq. 13)
    lengths = torch.tensor([0, 5, 6, 7, 9, 10, 12])
    assert overlong_penalty(lengths, max_tokens=10, buffer=4).tolist() == pytest.approx(
        [0, 0, 0, -0.25, -0.75, -1, -1])
    # factor 0.5 halves it; buffer = max_tokens ramps from the first token: 5 tokens of 10 -> -0.5
    assert overlong_penalty(lengths, max_tokens=10, buffer=4, factor=0.5).tolist()[3:5] == pytest.approx([-0.125, -0.375])
    assert overlong_penalty(torch.tensor([5]), max_tokens=10, buffer=10).item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, max_tokens=4, buffer=5)


def _sig(preset, **kw):
    cfg = AlgoConfig.from_preset(preset, **kw)
    return prepare_batch_signals(STATUSES, cfg, request_ids=["a", "b"], finish_reasons=FINISH,
                                 response_lengths=LENGTHS)


def test_soft_penalty_shapes_the_reward_before_the_advantage():
    s = _sig("grpo", overlong={"soft_penalty": {"max_tokens": 10, "buffer": 4}})
    # penalties (start 6): 5 -> 0, 10 -> -1, 10 -> -1, 7 -> -0.25 | 6 -> 0, 8 -> -0.5, 9 -> -0.75, 10 -> -1
    # rewards {0, 1} + penalty: 1, -1, 0, -0.25 | 1, 0.5, 0.25, -1
    assert s["rewards"].flatten().tolist() == pytest.approx([1, -1, 0, -0.25, 1, 0.5, 0.25, -1])
    # GRPO on the shaped rewards of group 0: mean -0.25 / 4 = -0.0625, deviations 1.0625, -0.9375, 0.0625, -0.1875,
    # unbiased std sqrt(2.046875 / 3) = 0.82601
    mean, std = -0.0625, (((1.0625**2) + (0.9375**2) + (0.0625**2) + (0.1875**2)) / 3) ** 0.5
    assert s["advantages"][0].tolist() == pytest.approx([(r - mean) / (std + 1e-6) for r in (1, -1, 0, -0.25)],
                                                        rel=1e-5)
    m = s["metrics"]
    # mean penalty (0 - 1 - 1 - 0.25 + 0 - 0.5 - 0.75 - 1) / 8 = -0.5625; 6 of 8 samples penalised; none dropped
    assert m["overlong_penalty_mean"] == pytest.approx(-0.5625)
    assert m["overlong_penalized_fraction"] == pytest.approx(0.75) and m["overlong_dropped"] == 0
    assert m["reward_mean"] == pytest.approx(0.0625)  # shaped rewards: (1 - 1 + 0 - .25 + 1 + .5 + .25 - 1) / 8
    assert "overlong_dropped" not in _sig("grpo")["metrics"]  # off: no such metrics


def test_drop_truncated_leaves_the_loss_but_not_the_group_statistics():
    s = _sig("grpo", overlong={"drop_truncated": True})
    assert s["keep"].flatten().tolist() == [True, False, False, True, True, True, True, False]
    assert s["sample_weight"].flatten().tolist() == [1, 0, 0, 1, 1, 1, 1, 0]
    # group 0 keeps its statistics over all four valid samples (rewards 1, 0, 1, 0: mean 0.5, std 0.57735),
    # so the two kept samples get +0.866 and -0.866; the truncated ones get 0
    a = 0.5 / (0.5773503 + 1e-6)
    assert s["advantages"][0].tolist() == pytest.approx([a, 0, 0, -a], rel=1e-5)
    # filter none keeps every sample, so all 3 truncated ones count as dropped
    assert s["metrics"]["overlong_dropped"] == 3
    assert s["metrics"]["kept_sample_fraction"] == pytest.approx(5 / 8)
    # under a soft filter too: the truncated samples leave the loss entirely (weight 0)
    soft = _sig("reinforce_rej", soft_filter=True, overlong={"drop_truncated": True})
    assert soft["sample_weight"].flatten().tolist() == [1, 0, 0, 1, 1, 1, 1, 0]
    # both groups are mixed (2 + 2, 3 + 1), so reinforce_rej had kept all 3 truncated samples
    assert soft["metrics"]["overlong_dropped"] == 3


def test_missing_inputs_and_config_validation():
    cfg = AlgoConfig(overlong={"drop_truncated": True})
    with pytest.raises(ValueError, match="finish_reasons"):
        prepare_batch_signals(STATUSES, cfg)
    cfg = AlgoConfig(overlong={"soft_penalty": {"max_tokens": 10, "buffer": 4}})
    with pytest.raises(ValueError, match="response_lengths"):
        prepare_batch_signals(STATUSES, cfg, finish_reasons=FINISH)
    with pytest.raises(ConfigError, match="buffer"):
        AlgoConfig.from_preset("grpo", overlong={"soft_penalty": {"max_tokens": 4, "buffer": 5}})
    # SFT on raw rewards may not put a negative weight on -log pi: a penalty of 2 takes a correct answer below 0
    with pytest.raises(ConfigError, match="overlong penalty"):
        AlgoConfig.from_preset("raft", advantage="raw", overlong={"soft_penalty": {"max_tokens": 8, "buffer": 4,
                                                                                   "factor": 2.0}})
    AlgoConfig.from_preset("raft", advantage="raw", overlong={"soft_penalty": {"max_tokens": 8, "buffer": 4}})


def test_sample_log_shows_truncated_samples_as_not_kept():
    groups = make_groups([[C, W, C, W]], seed=2, response_lens=[[3, 4, 5, 6]])
    groups[0].samples[2].finish_reason = "length"
    j = judge_samples(groups, AlgoConfig.from_preset("reinforce_rej", overlong={"drop_truncated": True}))
    assert j.kept == [[True, True, False, True]]
    # soft penalty over 4..6 tokens (start 4, buffer 2): 3 -> 0, 4 -> 0, 5 -> -0.5, 6 -> -1
    j = judge_samples(groups, AlgoConfig.from_preset(
        "reinforce_rej", overlong={"soft_penalty": {"max_tokens": 6, "buffer": 2}}))
    assert j.rewards == [pytest.approx([1, 0, 0.5, -1])]


def test_train_step_trains_only_the_untruncated_samples(tiny):
    from winnow.learner.step import OptimConfig, Trainer

    model, tok = tiny
    groups = make_groups([[C, W, C, W], [C, C, W, W]], seed=5)
    groups[0].samples[0].finish_reason = "length"
    groups[1].samples[3].finish_reason = "length"
    algo = AlgoConfig.from_preset("grpo", kl_coef=0.0, entropy_coef=0.0, overlong={"drop_truncated": True})
    t = Trainer(model, algo, OptimConfig(lr=1e-3, micro_batch_size=3, weight_decay=0.0), pad_token_id=tok.pad_token_id)
    m = t.train_step(groups)
    kept = [s for g in groups for s in g.samples if s.finish_reason != "length"]
    assert m["sequences"] == 6 and m["tokens"] == sum(len(s.response_token_ids) for s in kept)
    assert m["overlong_dropped"] == 2 and m["truncated_fraction"] == pytest.approx(2 / 8)
    assert m.judged.kept == [[False, True, True, True], [True, True, True, False]]
