"""Builders shared by the usability tests (fixtures: make_group, make_row)."""

from __future__ import annotations

import pytest

from winnow.v1 import messages_pb2

# statuses: 1 correct, 2 wrong, 3 no_answer, 7 error


def scored_group(statuses, *, prompt_id="p/0", request_id="r-0-0", problem="What is 2+3?", gold="5",
                 texts=None, version=0):
    texts = texts or [f"answer {i}" for i in range(len(statuses))]
    samples = [
        messages_pb2.Sample(
            response_token_ids=[5, 6, 7][: 1 + i % 3],
            behaviour_logprobs=[-1.0] * (1 + i % 3),
            finish_reason="length" if i == 1 else "stop",
            text=texts[i],
            status=st,
            reward=1.0 if st == 1 else 0.0,
            extracted="5" if st == 1 else ("4" if st == 2 else ""),
        )
        for i, st in enumerate(statuses)
    ]
    return messages_pb2.ScoredGroup(
        prompt_id=prompt_id, request_id=request_id, prompt_token_ids=[1, 2], samples=samples,
        policy_version=version, task="math", problem=problem, gold=gold, generator_id="gen-0",
    )


def metrics_row(version=3, **extra):
    row = {
        "version": version, "time": 1_700_000_000.0 + version, "wait_s": 0.5, "compute_s": 1.5,
        "outcomes": {"trained": 4, "stale": 1}, "batch_outcomes": {"trained": 2},
        "loss": -0.25, "pg_loss": -0.3, "grad_norm": 0.5, "lr": 1e-6, "entropy": 0.7, "kl": 0.01,
        "mismatch_kl": 0.002, "response_length_mean": 42.0, "truncated_fraction": 0.125,
        "reward_mean": 0.375, "staleness_mean": 0.5, "tokens": 100.0, "tokens_per_s": 66.0,
    }
    row.update(extra)
    return row


@pytest.fixture
def make_group():
    return scored_group


@pytest.fixture
def make_row():
    return metrics_row
