"""``winnow generator run``: config resolution, and the real process (SIGTERM, /health, /metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from winnow.brokers import free_port
from winnow.cli import main


def test_print_config_resolves_file_and_overrides(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(
        "generator:\n  batch_prompts: 2\n  verifier:\n    endpoints: {'rg/*': 'v:1'}\nkafka:\n  topic_prefix: run9\n"
    )
    rc = main(
        ["generator", "run", "--config", str(f), "--set", "sampling.max_new_tokens=17", "--print-config"]
    )
    assert rc == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["batch_prompts"] == 2 and cfg["sampling"]["max_new_tokens"] == 17
    assert cfg["kafka"]["topic_prefix"] == "run9" and cfg["verifier"]["endpoints"] == {"rg/*": "v:1"}


def test_bad_config_names_the_field(capsys):
    assert main(["generator", "run", "--set", "sampling.top_p=3", "--print-config"]) == 2
    assert "sampling.top_p" in capsys.readouterr().err




def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


async def test_generator_process_serves_and_stops_on_sigterm(kafka_config_one, tiny_dir, tmp_path):
    from winnow.kafka import (
        ScoredGroup,
        decode_record,
        ensure_topics,
        make_consumer,
        make_producer,
        send,
        topics,
    )
    from winnow.v1 import messages_pb2

    kcfg = kafka_config_one
    await ensure_topics(kcfg, partitions=1)
    port = free_port()
    cfg_file = tmp_path / "gen.yaml"
    cfg_file.write_text(
        f"generator:\n  model: {tiny_dir}\n  metrics_port: {port}\n  metrics_host: 127.0.0.1\n"
        f"  batch_wait_ms: 0\n  sampling: {{max_new_tokens: 5}}\n"
        f"kafka:\n  bootstrap_servers: {kcfg.bootstrap_servers}\n  topic_prefix: {kcfg.topic_prefix}\n"
        "  session_timeout_ms: 6000\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["WINNOW_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [sys.executable, "-m", "winnow", "generator", "run", "--config", str(cfg_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while _get(f"http://127.0.0.1:{port}/health")[0] != 200 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert _get(f"http://127.0.0.1:{port}/health")[0] == 200
        producer = make_producer(kcfg)
        await producer.start()
        try:
            req = messages_pb2.PromptRequest(
                prompt_id="p/0", request_id="r0", problem="What is 1 + 1?", gold="2", task="math", n=2
            )
            await send(producer, topics(kcfg).prompts, req)
        finally:
            await producer.stop()
        consumer = make_consumer(kcfg, [topics(kcfg).groups], "cli-test-reader")
        await consumer.start()
        groups = []
        try:
            deadline = time.monotonic() + 60
            while not groups and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    groups += [decode_record(ScoredGroup, r) for r in records]
        finally:
            await consumer.stop()
        assert [g.request_id for g in groups] == ["r0"] and len(groups[0].samples) == 2
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "winnow_generator_groups_published_total 1.0" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
