"""Prompt sharing (``OptimConfig.share_prompt``): the same hidden states, gradients and step as the plain forward."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import collate
from winnow.learner.config import OptimConfig
from winnow.learner.model import response_hidden
from winnow.learner.prefix import pack_micro_batches, shared_prompt_hidden
from winnow.learner.step import Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer

from .conftest import CORRECT, WRONG, make_groups

STATUSES = [
    [CORRECT, WRONG, CORRECT, CORRECT],
    [CORRECT, CORRECT, WRONG, WRONG],
    [WRONG, CORRECT, CORRECT, CORRECT],
]


def test_micro_batches_keep_groups_together_and_pack_them():
    # rows 0-3 group 0, rows 4-7 group 1, rows 8-9 group 2; order interleaves them
    group_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    zeros = torch.zeros(10, dtype=torch.long)
    order = torch.tensor([5, 1, 4, 0, 2, 6, 8])

    def pack(size):
        return [c.tolist() for c in pack_micro_batches(order, group_index, zeros, zeros, max_rows=size,
                                                       share_prompt=True)]

    # groups in order of first appearance (1, 0, 2); a group is split only when it alone is too big; a group
    # that fits in a fresh chunk is not split across two
    assert pack(2) == [[5, 4], [6, 1], [0, 2], [8]]
    assert pack(4) == [[5, 4, 6], [1, 0, 2, 8]]
    assert pack(8) == [[5, 4, 6, 1, 0, 2, 8]]
    assert pack(3) == [[5, 4, 6], [1, 0, 2], [8]]
    assert sorted(sum(pack(3), [])) == sorted(order.tolist())
    # without share_prompt: the order given, cut by rows
    plain = pack_micro_batches(order, group_index, zeros, zeros, max_rows=3)
    assert [c.tolist() for c in plain] == [[5, 1, 4], [0, 2, 6], [8]]


def test_micro_batches_by_token_budget():
    """Padded tokens: rows x max(prompt + response), or with share_prompt rows x max(response) + groups x
    max(prompt); a row over the budget alone gets its own micro-batch."""
    group_index = torch.tensor([0, 0, 1, 1, 2])
    prompt = torch.tensor([100, 100, 90, 90, 10])
    response = torch.tensor([20, 10, 30, 5, 500])
    order = torch.tensor([0, 1, 2, 3, 4])
    plain = pack_micro_batches(order, group_index, prompt, response, max_rows=64, max_tokens=250)
    # [0, 1]: 2 x 120 = 240; [0, 1, 2]: 3 x 120 = 360; [2, 3]: 2 x 120 = 240; [4] alone: 510 > 250
    assert [c.tolist() for c in plain] == [[0, 1], [2, 3], [4]]
    shared = pack_micro_batches(order, group_index, prompt, response, max_rows=64, max_tokens=140, share_prompt=True)
    # [0, 1]: 2 x 20 + 100 = 140; [0, 1, 2]: 3 x 30 + 2 x 100 = 290; [2, 3]: 2 x 30 + 90 = 150 > 140: split
    assert [c.tolist() for c in shared] == [[0, 1], [2], [3], [4]]
    assert [c.tolist() for c in pack_micro_batches(order, group_index, prompt, response, max_rows=64,
                                                   share_prompt=True)] == [[0, 1, 2, 3, 4]]


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


def _compare_with_plain(model, mb):
    """Run ``shared_prompt_hidden`` and the plain forward on ``mb`` (loss on the real response columns, as
    training); assert the same hidden states and gradients. Returns the input shapes of the decoder calls
    the shared forward made."""
    args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
    mask = mb.response_mask[..., None]
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        shared = shared_prompt_hidden(model, *args)
    finally:
        hook.remove()
    plain = response_hidden(model, *args)
    grads = []
    for out in (shared, plain):
        model.zero_grad()
        (out * mask * torch.randn_like(out, generator=torch.Generator().manual_seed(0))).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[1]:  # fp32 sums in another order: absolute tolerance on the gradient's scale
        scale = float(grads[1][k].abs().max())
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-5 * max(1.0, scale), rtol=1e-4, msg=k)
    return calls


def test_shared_prompt_hidden_runs_each_distinct_prompt_once_for_rows_of_several_groups():
    """A micro-batch of rows from three groups (prompts of different lengths, interleaved): one prompt pass
    over the three distinct prompts, the same hidden states and gradients as the plain forward."""
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    model.config.use_cache = False
    batch = collate(make_groups(STATUSES, seed=7, prompt_lens=[4, 9, 6]), tok.pad_token_id)
    mb = batch.rows(torch.tensor([0, 4, 9, 2, 5, 8]))
    assert _compare_with_plain(model, mb)[0] == (3, mb.prompt_width)  # one row per distinct prompt


def _with_common_prefix(groups, prefix_len=10, suffix_lens=(1, 4, 2)):
    """The groups with prompts ``common prefix + a suffix of its own`` (a system prompt and few-shot turns)."""
    common = [11 + i for i in range(prefix_len)]
    return [dataclasses.replace(g, prompt_token_ids=common + [200 + 7 * j + i for i in range(n)])
            for j, (g, n) in enumerate(zip(groups, suffix_lens, strict=True))]


@pytest.mark.parametrize("suffix_lens", [(1, 4, 2), (3, 3, 5)])
def test_a_prefix_common_to_the_prompts_runs_once(suffix_lens):
    """Prompts that share a 10-token prefix: the prefix runs once (batch 1), then the suffixes (right-padded,
    batch 3), then the responses; the same hidden states and gradients as the plain forward."""
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    model.config.use_cache = False
    groups = _with_common_prefix(make_groups(STATUSES, seed=7), suffix_lens=suffix_lens)
    batch = collate(groups, tok.pad_token_id)
    mb = batch.rows(torch.tensor([0, 4, 9, 2, 5, 8, 11]))
    assert _compare_with_plain(model, mb)[:2] == [(1, 10), (3, max(suffix_lens))]


def test_a_prompt_that_is_the_common_prefix_of_the_others_keeps_a_suffix_token():
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    groups = make_groups(STATUSES, seed=7)
    common = list(range(11, 23))  # 12 tokens; group 0's prompt is exactly these
    prompts = [common, common + [40, 41], common + [50]]
    groups = [dataclasses.replace(g, prompt_token_ids=pr) for g, pr in zip(groups, prompts, strict=True)]
    mb = collate(groups, tok.pad_token_id).rows(torch.arange(12))
    args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        with torch.no_grad():
            shared = shared_prompt_hidden(model, *args)
    finally:
        hook.remove()
    assert calls[:2] == [(1, 11), (3, 3)]  # the prefix stops one token short of the shortest prompt
    with torch.no_grad():
        plain = response_hidden(model, *args)
    mask = mb.response_mask[..., None]
    torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("common_prefix", [False, True])
@pytest.mark.parametrize("micro_batch", [3, 12])
@pytest.mark.parametrize("preset", ["raft", "grpo"])
def test_train_step_with_shared_prompt_matches_the_plain_step(preset, micro_batch, common_prefix):
    m1, tok = build_tiny_model_and_tokenizer(seed=5)
    m2 = copy.deepcopy(m1)
    groups = make_groups(STATUSES, seed=4, prompt_lens=[5, 8, 3])
    if common_prefix:
        groups = _with_common_prefix(groups)
    metrics = []
    for model, share in ((m1, False), (m2, True)):
        t = Trainer(model, AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0),
                    OptimConfig(lr=1e-3, micro_batch_size=micro_batch, weight_decay=0.0, share_prompt=share),
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


def test_one_autocast_region_per_step_gives_the_gradient_of_one_region_per_forward():
    """bf16 autocast over fp32 weights, 6 micro-batches: casting the weights once per step (autocast's cache,
    reused by every micro-batch's forward and backward) accumulates the same gradient as casting them in
    every forward."""
    model, tok = build_tiny_model_and_tokenizer(seed=5)
    groups = _with_common_prefix(make_groups(STATUSES, seed=4, prompt_lens=[5, 8, 3]))
    grads = []
    for region in (True, False):
        t = Trainer(model, AlgoConfig.from_preset("grpo", kl_coef=0.0, entropy_coef=0.0),
                    OptimConfig(lr=1e-3, micro_batch_size=2, share_prompt=True), pad_token_id=tok.pad_token_id,
                    autocast_dtype=torch.bfloat16)
        t.autocast_region = region
        t.forward_backward(groups)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5, msg=k)
        assert grads[0][k].abs().sum() > 0 or "norm" in k, k
