"""Prompt sharing (``OptimConfig.share_prompt``): the same hidden states, gradients and step as the plain forward."""

from __future__ import annotations

import copy

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import collate
from winnow.learner.config import OptimConfig
from winnow.learner.model import response_hidden
from winnow.learner.prefix import group_micro_batches, shared_prompt_hidden
from winnow.learner.step import Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer

from .conftest import CORRECT, WRONG, make_groups

STATUSES = [
    [CORRECT, WRONG, CORRECT, CORRECT],
    [CORRECT, CORRECT, WRONG, WRONG],
    [WRONG, CORRECT, CORRECT, CORRECT],
]


def test_group_micro_batches_keep_groups_apart_and_order():
    # rows 0-3 group 0, rows 4-7 group 1; order interleaves them
    group_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    order = torch.tensor([5, 1, 4, 0, 2, 6])
    chunks = group_micro_batches(order, group_index, size=2)
    assert [c.tolist() for c in chunks] == [[5, 4], [6], [1, 0], [2]]


def test_shared_prompt_hidden_equals_the_plain_forward_values_and_gradients():
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    model.config.use_cache = False
    # prompts of different lengths, so the group's prompt is left-padded in the batch
    groups = make_groups(STATUSES, seed=7, prompt_lens=[4, 9, 6])
    batch = collate(groups, tok.pad_token_id)
    rows = torch.tensor([4, 5, 7])  # group 1 (the longest prompt) and ...
    for idx in (rows, torch.tensor([0, 2, 3])):  # ... group 0 (left-padded prompt)
        mb = batch.rows(idx)
        args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
        plain = response_hidden(model, *args)
        model.zero_grad()
        (plain * torch.randn_like(plain, generator=torch.Generator().manual_seed(0))).sum().backward()
        g_plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        shared = shared_prompt_hidden(model, *args)
        model.zero_grad()
        (shared * torch.randn_like(shared, generator=torch.Generator().manual_seed(0))).sum().backward()
        g_shared = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        mask = mb.response_mask[..., None]  # padded response columns may differ; they are never trained on
        torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=1e-4)
        assert g_plain.keys() == g_shared.keys() and g_plain
        for k in g_plain:
            torch.testing.assert_close(g_shared[k], g_plain[k], atol=1e-5, rtol=1e-4, msg=k)


def test_shared_prompt_hidden_refuses_rows_of_different_groups():
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    batch = collate(make_groups(STATUSES, seed=7, prompt_lens=[4, 9, 6]), tok.pad_token_id)
    mb = batch.rows(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="identical prompt"):
        shared_prompt_hidden(model, mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width,
                             mb.response_width)


@pytest.mark.parametrize("preset", ["raft", "grpo"])
def test_train_step_with_shared_prompt_matches_the_plain_step(preset):
    m1, tok = build_tiny_model_and_tokenizer(seed=5)
    m2 = copy.deepcopy(m1)
    groups = make_groups(STATUSES, seed=4, prompt_lens=[5, 8, 3])
    metrics = []
    for model, share in ((m1, False), (m2, True)):
        t = Trainer(model, AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0),
                    OptimConfig(lr=1e-3, micro_batch_size=3, weight_decay=0.0, share_prompt=share),
                    pad_token_id=tok.pad_token_id)
        metrics.append(t.train_step(groups))
    for k in ("loss", "entropy", "tokens", "ratio_mean"):
        assert metrics[1][k] == pytest.approx(metrics[0][k], rel=1e-4, abs=1e-6), k
    moved = 0
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p2, p1, atol=1e-5, rtol=1e-4, msg=k)
    for (_, p1), p0 in zip(m1.named_parameters(), build_tiny_model_and_tokenizer(seed=5)[0].parameters(), strict=True):
        moved += int(not torch.equal(p1, p0))
    assert moved > 0  # the step did something, so the comparison is not vacuous


def test_share_prompt_needs_the_hidden_mode():
    model, tok = build_tiny_model_and_tokenizer(seed=1)
    with pytest.raises(ValueError, match="share_prompt"):
        Trainer(model, AlgoConfig.from_preset("raft", kl_coef=0.0), OptimConfig(share_prompt=True),
                pad_token_id=tok.pad_token_id, logprob_mode="logits")
