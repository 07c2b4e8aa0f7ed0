"""Fixtures for the learner tests: the tiny model and hand-made scored groups."""

from __future__ import annotations

import random

import pytest
import torch

from winnow.learner.batch import GroupData, SampleData
from winnow.learner.tiny import build_tiny_model_and_tokenizer

CORRECT, WRONG, ERROR = 1, 2, 7  # winnow.verdict.Status values


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is 10-30x faster than two under load
    (measured: a learning-test step 67 ms vs 1.2 s). Restored after each module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny():
    """A fresh tiny Qwen2 (seed 0, fp32) and its tokenizer."""
    return build_tiny_model_and_tokenizer(seed=0)


def make_groups(
    statuses: list[list[int]],
    *,
    vocab: int = 300,
    seed: int = 0,
    prompt_lens: list[int] | None = None,
    response_lens: list[list[int]] | None = None,
    policy_version: int = 0,
    logprob: float = -2.0,
) -> list[GroupData]:
    """Groups with random prompt/response token ids; ``statuses[g][i]`` is the status of sample i of group g."""
    rng = random.Random(seed)
    groups = []
    for g, row in enumerate(statuses):
        p = prompt_lens[g] if prompt_lens else rng.randint(3, 9)
        samples = []
        for i, st in enumerate(row):
            r = response_lens[g][i] if response_lens else rng.randint(1, 7)
            samples.append(
                SampleData(
                    response_token_ids=[rng.randrange(3, vocab) for _ in range(r)],
                    behaviour_logprobs=[logprob] * r,
                    policy_versions=[policy_version] * r,
                    status=st,
                )
            )
        groups.append(
            GroupData(
                prompt_id=f"p{g}",
                request_id=f"r{g}",
                prompt_token_ids=[rng.randrange(3, vocab) for _ in range(p)],
                samples=samples,
            )
        )
    return groups


@torch.no_grad()
def current_logprobs(model, group: GroupData) -> list[list[float]]:
    """log pi(a_t) of each sample's response under ``model``, one sequence at a time (no padding)."""
    out = []
    for s in group.samples:
        ids = torch.tensor([group.prompt_token_ids + s.response_token_ids])
        logits = model(input_ids=ids).logits[0, len(group.prompt_token_ids) - 1 : -1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(s.response_token_ids)[:, None])[:, 0]
        out.append(lp.tolist())
    return out
