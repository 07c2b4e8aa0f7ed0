"""Helpers for the Kafka plumbing tests: message builders and a bounded consume loop."""

from __future__ import annotations

import asyncio
import hashlib
import time
from types import SimpleNamespace

import pytest

from winnow.v1 import messages_pb2, verifier_pb2


def prompt_request(i: int) -> messages_pb2.PromptRequest:
    return messages_pb2.PromptRequest(
        prompt_id=f"arith/{i}",
        request_id=f"req-{i}",
        problem=f"What is {i} + 1?",
        gold=str(i + 1),
        task="arith",
        n=2,
        release_version=3,
        sampling=messages_pb2.SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=16, seed=i),
        verifier_options={"mode": "math"},
        released_at=1700000000.5,
    )


def scored_group(i: int, policy_version: int = 3) -> messages_pb2.ScoredGroup:
    samples = [
        messages_pb2.Sample(
            response_token_ids=[5, 6, 7],
            behaviour_logprobs=[-0.5, -1.0, -0.25],
            policy_versions=[policy_version] * 3,
            finish_reason="stop",
            text=f"\\boxed{{{i + 1}}}",
            status=verifier_pb2.STATUS_CORRECT if k == 0 else verifier_pb2.STATUS_WRONG,
            reward=1.0 if k == 0 else 0.0,
            extracted=str(i + 1),
        )
        for k in range(2)
    ]
    return messages_pb2.ScoredGroup(
        prompt_id=f"arith/{i}",
        request_id=f"req-{i}",
        prompt_token_ids=[1, 2, 3, 4],
        samples=samples,
        generator_id="gen-0",
        policy_version=policy_version,
        task="arith",
        created_at=1700000001.0,
        generation_seconds=0.5,
        scoring_seconds=0.01,
    )


def weight_announcement(version: int) -> messages_pb2.WeightAnnouncement:
    return messages_pb2.WeightAnnouncement(
        version=version,
        uri=f"file:///weights/v{version}/model.safetensors",
        sha256=hashlib.sha256(str(version).encode()).hexdigest(),
        format="safetensors",
        created_at=1700000000.0 + version,
    )


async def consume(consumer, n: int, timeout_s: float = 20.0, idle_s: float | None = None) -> list:
    """Records from ``consumer`` until ``n`` arrived, ``timeout_s`` passed, or (if ``idle_s``)
    nothing arrived for ``idle_s`` after the first record."""
    out: list = []
    deadline = time.monotonic() + timeout_s
    last = None
    while len(out) < n and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        got = [r for records in batches.values() for r in records]
        out.extend(got)
        now = time.monotonic()
        if got:
            last = now
        elif idle_s is not None and last is not None and now - last > idle_s:
            break
    return out


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()


@pytest.fixture
def build():
    return SimpleNamespace(
        prompt_request=prompt_request,
        scored_group=scored_group,
        weight_announcement=weight_announcement,
        consume=consume,
        wait_for=wait_for,
    )
