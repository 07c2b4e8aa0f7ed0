"""Learning-rate schedules (``optim.schedule``): hand-computed factors, the Trainer's ``lr_at`` and the lr the
optimizer actually steps with, and ``total_steps`` defaulting to ``max_steps``."""

from __future__ import annotations

import math

import pytest
import torch

from winnow.config import ConfigError, load_config
from winnow.learner.algo import AlgoConfig
from winnow.learner.config import LearnerConfig, OptimConfig
from winnow.learner.step import Trainer


def test_constant_schedule_is_the_old_warm_up():
    o = OptimConfig(lr=1.0, warmup_steps=4)
    assert [o.lr_factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # (s + 1) / 4, then 1


def test_cosine_with_warm_up_and_floor_by_hand():
    o = OptimConfig(lr=1.0, warmup_steps=2, schedule="cosine", total_steps=6, min_lr_ratio=0.1)
    # warm-up: (s + 1) / 2 -> 0.5, 1.0; decay: progress p = (s - 2) / (6 - 2), factor 0.1 + 0.9 * 0.5 (1 + cos(pi p))
    expected = [
        0.5, 1.0,
        1.0,                                         # s=2: p=0
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),  # s=3: p=0.25 -> 0.868198
        0.1 + 0.9 * 0.5,                              # s=4: p=0.5 -> 0.55
        0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)),  # s=5: p=0.75 -> 0.231802
        0.1,                                          # s=6: p=1
        0.1,                                          # past total_steps: stays at the floor
    ]
    assert [o.lr_factor(s) for s in range(8)] == pytest.approx(expected, abs=1e-9)
    assert o.lr_factor(3) == pytest.approx(0.868198, abs=1e-6)


def test_linear_decay_by_hand():
    o = OptimConfig(lr=1.0, warmup_steps=2, schedule="linear", total_steps=6)
    # after warm-up: (6 - s) / (6 - 2) -> 1, 0.75, 0.5, 0.25, 0, then 0
    assert [o.lr_factor(s) for s in range(8)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    floor = OptimConfig(lr=1.0, schedule="linear", total_steps=4, min_lr_ratio=0.2)
    # 0.2 + 0.8 * (4 - s) / 4 -> 1.0, 0.8, 0.6, 0.4, 0.2
    assert [floor.lr_factor(s) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_total_steps_defaults_to_max_steps_and_is_needed():
    cfg = load_config(LearnerConfig, data={"learner": {"max_steps": 20, "optim": {"schedule": "cosine"}}})
    assert cfg.optim.total_steps == 20
    cfg = load_config(LearnerConfig, data={"learner": {"max_steps": 20, "optim": {"schedule": "cosine",
                                                                                   "total_steps": 50}}})
    assert cfg.optim.total_steps == 50
    with pytest.raises(ConfigError, match="optim.total_steps"):
        load_config(LearnerConfig, data={"learner": {"optim": {"schedule": "linear"}}})


def test_trainer_steps_with_the_scheduled_lr():
    model = torch.nn.Linear(2, 1)
    optim = OptimConfig(lr=0.1, schedule="linear", total_steps=4)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), optim, pad_token_id=0, logprob_mode="logits")
    assert [trainer.lr_at(v) for v in range(5)] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])
    for expected in (0.1, 0.075):
        model.weight.grad = torch.ones_like(model.weight)
        trainer.optimizer_step()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
