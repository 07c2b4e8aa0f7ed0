"""Poison records at the learner (issue 13, faults 1 and 7): quarantined or dropped and counted, never trained,
never a crash; their offsets are passed like any done record. No broker: records are fed to the service's
record handler directly."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from winnow.kafka import decode, encode
from winnow.learner.algo import AlgoConfig
from winnow.learner.book import Outcome
from winnow.learner.config import LearnerConfig
from winnow.learner.service import LearnerService
from winnow.learner.step import Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer
from winnow.v1 import messages_pb2

N, MAX_NEW = 2, 8


def _service(tmp_path):
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id)
    cfg = LearnerConfig(n=N, batch_groups=4, run_dir=str(tmp_path), tracking={"sinks": []},
                        sampling={"max_new_tokens": MAX_NEW})
    service = LearnerService(cfg, trainer, source=None, registry=CollectorRegistry())
    service.book.releases(now=0.0)  # <run>-0-0 .. <run>-7-0 outstanding
    return service


def _group(rid, *, status=1, tokens=3, version=0):
    return messages_pb2.ScoredGroup(
        prompt_id="p", request_id=rid, prompt_token_ids=[5, 6], policy_version=version, generator_id="gen-7",
        samples=[messages_pb2.Sample(response_token_ids=[7] * tokens, behaviour_logprobs=[-1.0] * tokens,
                                     policy_versions=[version] * tokens, status=status)] * N,
    )


def _record(offset, value):
    return SimpleNamespace(topic="w.groups", partition=0, offset=offset, value=value, key=b"k", headers=())


def test_poison_groups_are_quarantined_dropped_and_passed(tmp_path):
    s = _service(tmp_path)
    run = s.book.state.run_id
    feed = [
        b"\x08\x96\x01 not a scored group",  # 0: undecodable
        encode(_group(f"{run}-0-0", status=8)),  # 1: a status outside the enum (crashed the reward map before)
        encode(_group(f"{run}-1-0", tokens=MAX_NEW + 1)),  # 2: more response tokens than were asked for
        encode(_group("someone-else-0-0")),  # 3: a request this run never released
        encode(_group(f"{run}-2-0", version=5)),  # 4: a policy version above the learner's (0)
        encode(_group(f"{run}-3-0")),  # 5: fine
    ]
    for offset, value in enumerate(feed):
        s._on_record(_record(offset, value))  # never raises
    assert list(s.book.buffer) == [f"{run}-3-0"]
    counts = s.book.counts
    assert (counts[Outcome.CORRUPT], counts[Outcome.FOREIGN], counts[Outcome.FUTURE]) == (3, 1, 1)
    rows = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [(r["offset"], r["request_id"]) for r in rows] == [(0, ""), (1, f"{run}-0-0"), (2, f"{run}-1-0")]
    assert "status 8 is not a verifier Status" in rows[1]["reason"] and "gen-7" in rows[1]["reason"]
    assert f"{MAX_NEW + 1} response tokens, more than the {MAX_NEW} allowed" in rows[2]["reason"]
    reg = s.metrics.dead_letters
    assert reg.labels(reason="undecodable")._value.get() == 1 and reg.labels(reason="invalid")._value.get() == 2
    # every record but the buffered one is done: the committable offset stops at the buffered group
    assert s.book.committable() == {("w.groups", 0): 5}
    # the quarantined request of ours is done (its slot free); the future one, and the one answered with more
    # tokens than asked (a request of other settings), are released again at once under their next attempt
    assert f"{run}-0-0" not in s.book.state.unconsumed and f"{run}-2-0" in s.book.state.unconsumed
    releases, _ = s.book.releases(now=1.0)
    assert {f"{run}-1-1", f"{run}-2-1"} <= {r.request_id for r in releases}


def test_a_resumed_learner_with_another_n_asks_the_old_requests_again(tmp_path):
    """A learner resumed with a new ``n`` reads the dead lineage's groups (the old ``n``) under the ids it releases
    again: each is asked again once under the next attempt instead of dropping its position; a malformed group under
    an id not released yet silences nothing (that position is released, later, as usual)."""
    s = _service(tmp_path)
    run = s.book.state.run_id
    old_n = _group(f"{run}-0-0")
    old_n.samples.append(old_n.samples[0])  # N + 1 samples
    s._on_record(_record(0, encode(old_n)))
    s._on_record(_record(1, encode(_group(f"{run}-9-0", status=8))))  # position 9: not released yet
    assert s.book.counts[Outcome.CORRUPT] == 2 and not s.book.is_done(f"{run}-9-0")
    assert [r.request_id for r in s.book.releases(now=1.0)[0]] == [f"{run}-0-1"]
    s._on_record(_record(2, encode(_group(f"{run}-0-1"))))  # the new attempt's group, with n = N: buffered
    assert list(s.book.buffer) == [f"{run}-0-1"]
    for pos in range(1, 4):
        s._on_record(_record(2 + pos, encode(_group(f"{run}-{pos}-0"))))
    batch = s.book.take_batch()
    for b in batch:
        s.book.finish(b.request_id, b.prompt_id, b.where, Outcome.TRAINED)
    released = [r.request_id for r in s.book.releases(now=2.0)[0]]
    assert released == [f"{run}-{p}-0" for p in (8, 9, 10, 11)]  # position 9 is sent


class _Producer:
    """Records what would be sent; ``send`` returns an awaitable acknowledgement, as aiokafka's does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Source:
    def get(self, position):
        from winnow.prompts import Problem

        text = "x " * 50_000 if position == 1 else f"What is {position} + 1?"  # position 1: a poison row
        return Problem(f"p/{position}", text, str(position + 1), "math")


async def test_a_poison_prompt_is_not_released(tmp_path):
    """Fault 2: a 100k-character prompt is bounded at the learner when releasing; the other prompts go out."""
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id)
    cfg = LearnerConfig(n=N, batch_groups=2, run_dir=str(tmp_path), tracking={"sinks": []}, max_prompt_tokens=64)
    s = LearnerService(cfg, trainer, _Source(), CollectorRegistry(), prompt_tokens=lambda p: len(tok(p.problem)["input_ids"]))
    s._producer = _Producer()
    releases, _ = s.book.releases(now=0.0)
    await s._send(releases)
    sent = [decode(messages_pb2.PromptRequest, v).prompt_id for _, v in s._producer.sent]
    assert sent == ["p/0", "p/2", "p/3"]
    assert s.book.counts[Outcome.REJECTED] == 1 and s.book.is_done(releases[1].request_id)
    assert s.book.outstanding == 3  # its slot is free: the next release tops up
    assert [r.position for r in s.book.releases(now=0.0)[0]] == [4]
