"""A finished run stays finished (learner/completion.py).

- the marker's rules (pure file logic);
- the learner service against a real broker: at ``max_steps`` it writes the marker, sets
  ``winnow_learner_run_finished`` and announces the final weights with ``final=true``;
- the real ``winnow learner run`` process restarted on that run dir: with ``on_finish: exit`` it
  exits 0 at once without training, with ``on_finish: idle`` (the chart) it stays up, healthy,
  serving the metrics, until SIGTERM;
- a generator that reads a final announcement leaves the prompts group (asks for no work) until a
  newer non-final announcement arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from winnow.brokers import free_port
from winnow.config import load_config
from winnow.v1 import messages_pb2

pytestmark = [pytest.mark.timeout(300)]


# ---------------------------------------------------------------------------------------------------
# the marker


def test_marker_rules(tmp_path) -> None:
    from winnow.learner.completion import finished_run, marker_path, read_marker, write_marker

    run = tmp_path / "run"
    assert finished_run(run, 5, resume=True) is None  # no marker
    write_marker(run, version=5, max_steps=5, run_id="abc")
    assert read_marker(run)["version"] == 5 and read_marker(run)["run_id"] == "abc"
    assert finished_run(run, 5, resume=True)["version"] == 5  # finished: honoured
    assert finished_run(run, 3, resume=True)["version"] == 5  # a smaller max_steps: still finished
    assert marker_path(run).exists()
    assert finished_run(run, 8, resume=True) is None  # max_steps raised: the run continues...
    assert not marker_path(run).exists()  # ...and the marker goes
    write_marker(run, version=5, max_steps=5)
    assert finished_run(run, None, resume=True) is None  # no max_steps any more: train on
    write_marker(run, version=5, max_steps=5)
    assert finished_run(run, 5, resume=False) is None  # a fresh run removes the old marker
    assert not marker_path(run).exists()
    marker_path(run).write_text("{not json")
    with pytest.raises(RuntimeError, match="finished.json is unreadable"):
        read_marker(run)


# ---------------------------------------------------------------------------------------------------
# learner: marker + final announcement, then the restarted process honours it


class _AnswerEverything:
    """A fake generator: answers each prompt request with a mixed group (one correct, one wrong)."""

    def __init__(self, kcfg, tokenizer, vocab: int) -> None:
        self.kcfg, self.tok, self.vocab, self.rng = kcfg, tokenizer, vocab, random.Random(0)

    async def run(self) -> None:
        from winnow.kafka import PromptRequest, decode_record, make_consumer, make_producer, send, topics

        t = topics(self.kcfg)
        consumer = make_consumer(self.kcfg, [t.prompts], "completion-fake-generators")
        producer = make_producer(self.kcfg)
        await producer.start()
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        req = decode_record(PromptRequest, record)
                        samples = [
                            messages_pb2.Sample(
                                response_token_ids=[self.rng.randrange(3, self.vocab) for _ in range(3)],
                                behaviour_logprobs=[-6.0] * 3,
                                policy_versions=[req.release_version] * 3,
                                finish_reason="stop",
                                status=status,
                                reward=1.0 if status == 1 else 0.0,
                            )
                            for status in (1, 2)
                        ]
                        await send(producer, t.groups, messages_pb2.ScoredGroup(
                            prompt_id=req.prompt_id, request_id=req.request_id,
                            prompt_token_ids=self.tok(req.problem)["input_ids"], samples=samples,
                            generator_id="fake", policy_version=req.release_version, task=req.task))
        finally:
            await consumer.stop()
            await producer.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _sample(body: str, name: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.slow
async def test_finished_run_stays_finished(kafka_config_one, tmp_path: Path) -> None:
    from winnow.learner.config import LearnerConfig
    from winnow.learner.model import build_trainer
    from winnow.learner.service import LearnerService
    from winnow.learner.tiny import save_tiny
    from winnow.prompts import make_source

    from ..weights_topic import latest_weight_announcement

    kcfg = kafka_config_one
    model_dir = save_tiny(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                               for i in range(40)))
    data = {
        "model": str(model_dir), "device": "cpu",
        "kafka": kcfg.model_dump(), "algo": {"preset": "grpo", "kl_coef": 0.0, "max_staleness": 1},
        "batch_groups": 2, "n": 2, "max_steps": 2, "kafka_partitions": 1,
        "prompts": {"kind": "jsonl", "path": str(prompts)},
        "weights": {"dir": str(tmp_path / "weights")}, "checkpoint": {"dir": str(tmp_path / "ckpt")},
        "run_dir": str(tmp_path / "run"), "metrics_port": 0, "metrics_host": "127.0.0.1",
    }
    cfg = load_config(LearnerConfig, data=data)
    trainer, tok = build_trainer(cfg)
    registry = CollectorRegistry()
    service = LearnerService(cfg, trainer, make_source(cfg.prompts), registry)
    fake = asyncio.create_task(_AnswerEverything(kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0]).run())
    try:
        assert await asyncio.wait_for(service.run(), 120) == 2
    finally:
        fake.cancel()
        await asyncio.gather(fake, return_exceptions=True)
    marker = json.loads((tmp_path / "run" / "finished.json").read_text())
    assert marker["version"] == 2 and marker["max_steps"] == 2
    assert registry.get_sample_value("winnow_learner_run_finished") == 1
    ann = await latest_weight_announcement(kcfg)
    assert ann.final and ann.version == 2  # the final announcement still names the final weights
    assert ann.sha256 == service._publisher.last.sha256

    # the restarted process: exit at once (winnow up, scripts) ...
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    port = free_port()
    cfg_file = tmp_path / "learner.yaml"
    cfg_file.write_text(json.dumps({"learner": {**data, "metrics_port": port}}))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS" and not k.startswith("WINNOW_")}
    cmd = [sys.executable, "-m", "winnow", "learner", "run", "--config", str(cfg_file)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished at version 2" in done.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == rows  # trained nothing

    # ... or stay up, idle and healthy, until SIGTERM (the chart's StatefulSet)
    proc = subprocess.Popen([*cmd, "--set", "on_finish=idle"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        status = 0
        while status != 200 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            status, _ = _get(f"http://127.0.0.1:{port}/health")
            await asyncio.sleep(0.2)
        assert status == 200
        _, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert _sample(body, "winnow_learner_run_finished") == 1
        assert _sample(body, "winnow_learner_weight_version") == 2
        assert _sample(body, "winnow_learner_steps_total") == 0
        assert 'winnow_build_info{' in body and "process_resident_memory_bytes" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == rows


# ---------------------------------------------------------------------------------------------------
# generator: a final announcement stops it asking for prompts


async def test_generator_stops_asking_after_the_final_announcement(kafka_config_one) -> None:
    from winnow.generator.config import GeneratorConfig
    from winnow.generator.service import GeneratorService
    from winnow.hf_engine import HFEngine
    from winnow.kafka import (
        ScoredGroup,
        decode_record,
        ensure_topics,
        make_consumer,
        make_producer,
        send,
        topics,
    )
    from winnow.learner.tiny import build_tiny_model_and_tokenizer
    from winnow.verifier.engine import MathVerifier

    cfg = GeneratorConfig(kafka=kafka_config_one.model_dump(), group_id="gen-final", generator_id="gen-final-0",
                          batch_prompts=2, batch_wait_ms=100, metrics_port=0, sampling={"max_new_tokens": 4},
                          weights={"poll_interval_s": 0.1}, kafka_partitions=1)
    t = topics(cfg.kafka)
    await ensure_topics(cfg.kafka, partitions=1)
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    verifier = MathVerifier(workers=1, timeout_s=5.0)
    registry = CollectorRegistry()
    service = GeneratorService(cfg, HFEngine(model, tok), registry, in_process_verifier=verifier)
    producer = make_producer(cfg.kafka)
    await producer.start()

    def announcement(final: bool) -> messages_pb2.WeightAnnouncement:
        # version 0 = the weights the engine already holds: nothing to load, only the flag matters
        return messages_pb2.WeightAnnouncement(version=0, uri="file:///w/v0/model.safetensors", sha256="0" * 64,
                                               format="safetensors", final=final)

    task = asyncio.create_task(service.run())
    try:
        await send(producer, t.weights, announcement(final=True))
        deadline = time.monotonic() + 60
        while not (service._consumer is not None and service._running and not service._consumer.subscription()):
            assert time.monotonic() < deadline, "the generator did not leave the prompts group"
            await asyncio.sleep(0.1)
        for i in range(2):
            await send(producer, t.prompts, messages_pb2.PromptRequest(
                prompt_id=f"toy/{i}", request_id=f"req-{i}", problem=f"What is {i} + 1?", gold=str(i + 1),
                task="math", n=2, release_version=0, released_at=time.time()))
        await asyncio.sleep(2.0)  # plenty for a consuming generator (batch_wait 0.1 s, weights poll 0.1 s)
        assert registry.get_sample_value("winnow_generator_groups_published_total") == 0
        assert service.healthy()  # idle, not dead
        # the run continues (a newer, non-final announcement): it consumes the waiting prompts
        await send(producer, t.weights, announcement(final=False))
        consumer = make_consumer(cfg.kafka, [t.groups], "final-reader")
        await consumer.start()
        got = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < 2 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    got += [decode_record(ScoredGroup, r) for r in records]
        finally:
            await consumer.stop()
        assert sorted(g.request_id for g in got) == ["req-0", "req-1"]
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 30)
        await producer.stop()
        verifier.close()


# ---------------------------------------------------------------------------------------------------
# metrics bind to loopback unless configured (issue 13, fault 7)


def test_standalone_services_serve_metrics_on_loopback_by_default() -> None:
    from winnow.generator.config import GeneratorConfig
    from winnow.learner.config import LearnerConfig
    from winnow.verifier.config import VerifierConfig

    assert LearnerConfig().metrics_host == "127.0.0.1"
    assert GeneratorConfig().metrics_host == "127.0.0.1"
    v = VerifierConfig()
    assert (v.metrics_host or v.host) == "127.0.0.1"
