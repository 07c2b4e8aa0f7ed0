"""fp32 master weights (issue 21, item 1): the learner keeps fp32 parameters and AdamW state on every device and
computes in bf16 by autocast; bf16 *parameters* are an explicit opt-in, because an AdamW update of ~lr rounds
away in them."""

from __future__ import annotations

import logging

import torch

from winnow.learner.model import low_precision_warning, resolve_dtype

from .conftest import CORRECT, WRONG, make_groups


def _config(tmp_path, **learner):
    from winnow.config import load_config
    from winnow.learner.config import LearnerConfig
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = {"numerics": {"precision": "bfloat16"},
            "learner": {"model": str(tmp_path / "m"), "device": "cpu", "algo": {"preset": "grpo", "kl_coef": 0.0},
                        "optim": {"lr": 1e-6, "weight_decay": 0.01}, **learner}}
    return load_config(LearnerConfig, data=data)


def _fraction_changed_by_one_step(trainer) -> float:
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train_step(make_groups([[CORRECT, WRONG, WRONG, CORRECT]] * 2, seed=1))
    assert not result.skipped and result["grad_norm"] > 0
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(trainer.model.parameters(), before, strict=True))
    return changed / sum(b.numel() for b in before)


def test_auto_is_fp32_master_weights_on_every_device():
    # before issue 21 "auto" resolved to bf16 parameters on CUDA, where AdamW cannot move them at RL learning rates
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16


def test_one_step_at_lr_1e_6_moves_fp32_masters_but_not_bf16_parameters(tmp_path, caplog):
    from winnow.learner.model import build_trainer

    default, _ = build_trainer(_config(tmp_path))
    assert next(default.model.parameters()).dtype == torch.float32
    assert default.autocast_dtype == torch.bfloat16  # the compute still runs in bf16
    moved = _fraction_changed_by_one_step(default)
    assert moved > 0.5, moved  # Adam's first step moves every weight with a gradient by ~lr

    with caplog.at_level(logging.WARNING, logger="winnow.learner.model"):
        bf16, _ = build_trainer(_config(tmp_path, dtype="bfloat16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert any("rounds to nothing" in r.getMessage() for r in caplog.records)
    stuck = _fraction_changed_by_one_step(bf16)
    assert stuck < 0.05, stuck  # |update| ~ 1e-6 << half the bf16 spacing of the weights: rounded away


def test_low_precision_warning_states_the_rounding():
    msg = low_precision_warning(torch.bfloat16, 1e-6)
    # 0.03 lies in [2^-6, 2^-5): bf16 values there are 2^-6 * eps = 2^-6 * 2^-7 = 1.22e-4 apart
    assert "1.2e-04" in msg and "lr = 1e-06" in msg and "learner.dtype: auto" in msg
    assert low_precision_warning(torch.float32, 1e-6) is None
