"""``winnow learner run``: config resolution, and the real process against a broker (admission
control, one step, weights announced, /health, /metrics, baseline eval, SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from winnow.brokers import free_port
from winnow.cli import main


def test_print_config(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  batch_groups: 3\n  algo: {preset: raft}\nkafka:\n  topic_prefix: run9\n")
    assert main(["learner", "run", "--config", str(f), "--set", "n=4", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["batch_groups"], cfg["n"], cfg["kafka"]["topic_prefix"]) == (3, 4, "run9")
    # every resolved field: the preset's filter/advantage/loss, the optimizer, the prompt source, the precision
    algo = cfg["algo"]
    assert (algo["preset"], algo["filter"], algo["advantage"], algo["loss"], algo["kl_coef"]) == (
        "raft", "raft", "raft", "sft", 0.001)
    assert cfg["optim"]["lr"] == 1e-6 and cfg["prompts"]["kind"] == "reasoning_gym"
    assert cfg["numerics"] == {"precision": "auto", "attention": "auto"}




def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _value(body: str, line_prefix: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.slow
async def test_learner_process(kafka_config_one, tmp_path):
    from winnow.kafka import (
        PromptRequest,
        decode_record,
        make_consumer,
        make_producer,
        send,
        topics,
    )
    from winnow.learner.tiny import build_tiny_tokenizer, save_tiny
    from winnow.v1 import messages_pb2

    from ..weights_topic import latest_weight_announcement

    kcfg = kafka_config_one
    model_dir = tmp_path / "tiny"
    save_tiny(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(20))
    )
    port = free_port()
    cfg_file = tmp_path / "learner.yaml"
    cfg_file.write_text(
        f"learner:\n  model: {model_dir}\n  metrics_port: {port}\n  metrics_host: 127.0.0.1\n"
        "  batch_groups: 2\n  n: 2\n  kafka_partitions: 1\n"
        "  algo: {preset: grpo, kl_coef: 0, max_staleness: 1}\n"
        f"  prompts: {{kind: jsonl, path: {prompts}, holdout: 2}}\n"
        "  eval: {every: 1, prompts: 2, max_new_tokens: 4, k: 2}\n"
        f"  weights: {{dir: {tmp_path / 'weights'}}}\n"
        f"  checkpoint: {{dir: {tmp_path / 'ckpt'}}}\n"
        f"  run_dir: {tmp_path / 'run'}\n"
        f"kafka:\n  bootstrap_servers: {kcfg.bootstrap_servers}\n  topic_prefix: {kcfg.topic_prefix}\n"
        "  session_timeout_ms: 6000\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "winnow", "learner", "run", "--config", str(cfg_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # admission control: with max_staleness 1 it releases exactly 2 batches and waits
        consumer = make_consumer(kcfg, [topics(kcfg).prompts], "cli-test-generator")
        await consumer.start()
        requests: list = []
        try:
            deadline = time.monotonic() + 120
            while len(requests) < 4 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read()
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    requests += [decode_record(PromptRequest, r) for r in records]
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # and no more
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    requests += [decode_record(PromptRequest, r) for r in records]
        finally:
            await consumer.stop()
        assert len(requests) == 4 and [r.release_version for r in requests] == [0] * 4
        assert all(r.n == 2 and r.prompt_id.startswith("prompts/") for r in requests)
        status, body = _get(f"http://127.0.0.1:{port}/health")
        assert status == 200
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert _value(body, "winnow_learner_prompts_released_total") == 4
        assert _value(body, "winnow_learner_requests_unconsumed") == 4
        eval_acc = _value(body, 'winnow_learner_eval_accuracy{set="heldout"}')
        assert eval_acc is not None and 0.0 <= eval_acc <= 1.0  # the baseline, at version 0
        mean_at_k = _value(body, 'winnow_learner_eval_mean_at_k{set="heldout"}')
        assert mean_at_k is not None and 0.0 <= mean_at_k <= 1.0

        # answer the first batch as a generator would: the learner takes one step and announces v1
        tok = build_tiny_tokenizer()
        producer = make_producer(kcfg)
        await producer.start()
        try:
            for i, req in enumerate(requests[:2]):
                samples = [
                    messages_pb2.Sample(
                        response_token_ids=[20 + i, 21, tok.eos_token_id],
                        behaviour_logprobs=[-5.0, -5.0, -5.0],
                        policy_versions=[0, 0, 0],
                        status=status,
                    )
                    for status in (1, 2)
                ]
                group = messages_pb2.ScoredGroup(
                    prompt_id=req.prompt_id,
                    request_id=req.request_id,
                    prompt_token_ids=tok(req.problem)["input_ids"],
                    samples=samples,
                    policy_version=0,
                )
                await send(producer, topics(kcfg).groups, group)
        finally:
            await producer.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            body = _get(f"http://127.0.0.1:{port}/metrics")[1]
            if _value(body, "winnow_learner_weight_version") == 1:
                break
            time.sleep(0.2)
        assert _value(body, "winnow_learner_weight_version") == 1
        assert _value(body, 'winnow_learner_groups_total{outcome="trained"}') == 2
        ann = await latest_weight_announcement(kcfg)
        assert ann is not None and ann.version == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "ckpt" / "LATEST").read_text() == "step-00000001"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in rows] == [0, 1] and "eval_accuracy" in rows[1] and "eval_mean_at_k" in rows[1]
