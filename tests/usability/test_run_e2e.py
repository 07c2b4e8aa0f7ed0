"""A real short run (`winnow up`, tiny model, real broker) and what a researcher does after it: the
sample log, TensorBoard events, the published version as a HF folder, `winnow export`, `winnow plot`.
Every number is cross-checked against metrics.jsonl, the run's own record."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _config(tiny: str, bootstrap: str) -> dict:
    return {
        "up": {"generators": 1, "start_verifier": True, "stop_timeout_s": 30},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": f"use-{uuid.uuid4().hex[:8]}",
                  "session_timeout_ms": 6000},
        "verifier": {"workers": 1, "timeout_s": 2.0},
        "generator": {"model": tiny, "batch_prompts": 2, "batch_wait_ms": 50, "sampling": {"max_new_tokens": 6},
                      "chat": {"few_shot": [], "system_prompt": None}, "weights": {"poll_interval_s": 0.2}},
        "learner": {
            "model": tiny,
            "algo": {"preset": "grpo", "kl_coef": 0.0},
            "optim": {"lr": 1.0e-3, "micro_batch_size": 8},
            "batch_groups": 2,
            "n": 2,
            "max_steps": 2,
            "sampling": {"max_new_tokens": 6},
            "prompts": {"kind": "reasoning_gym", "name": "basic_arithmetic", "size": 200, "seed": 1,
                        "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
            "tracking": {"sinks": ["tensorboard"], "samples": {"max_groups": 1}},
        },
    }


def _tb_scalars(logdir):
    from tensorboardX.proto import event_pb2

    out = {}
    for path in logdir.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 16 + n
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out[(v.tag, ev.step)] = v.simple_value
    return out


def test_after_a_run(tmp_path, kafka_bootstrap_one):
    from winnow.learner.tiny import save_tiny

    tiny = save_tiny(tmp_path / "tiny")
    cfg = tmp_path / "up.yaml"
    cfg.write_text(yaml.safe_dump(_config(tiny, kafka_bootstrap_one)))
    run = tmp_path / "run"
    winnow = [sys.executable, "-m", "winnow"]
    proc = subprocess.run([*winnow, "up", "--config", str(cfg), "--run-dir", str(run)], capture_output=True,
                          text=True, timeout=540, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = {r["version"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert sorted(metrics) == [1, 2]

    # the sample log: one group per step (max_groups=1), each with its problem, gold and n=2 samples
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["problem"] and r["gold"] and len(r["samples"]) == 2
        assert all(s["status"] in ("correct", "wrong", "no_answer", "unparsable") for s in r["samples"])
    shown = subprocess.run([*winnow, "samples", str(run), "--step", "2"], capture_output=True, text=True)
    assert shown.returncode == 0 and rows[1]["prompt_id"] in shown.stdout

    # TensorBoard holds the same numbers as metrics.jsonl
    tb = _tb_scalars(run / "tensorboard")
    for step in (1, 2):
        assert tb[("train/grad_norm", step)] == pytest.approx(metrics[step]["grad_norm"], rel=1e-6)
        assert tb[("train/reward_mean", step)] == pytest.approx(metrics[step]["reward_mean"], rel=1e-6)

    # the newest published version is a HF folder as it is; the export equals it
    from transformers import AutoModelForCausalLM

    published = run / "weights" / "v00000002"
    assert (published / "config.json").is_file() and (published / "tokenizer.json").is_file()
    a = AutoModelForCausalLM.from_pretrained(published)
    out = tmp_path / "export"
    done = subprocess.run([*winnow, "export", str(run), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    b = AutoModelForCausalLM.from_pretrained(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all((sa[k] == sb[k]).all() for k in sa)

    plotted = subprocess.run([*winnow, "plot", str(run), "-o", str(tmp_path / "p.png")], capture_output=True,
                             text=True)
    assert plotted.returncode == 0 and (tmp_path / "p.png").stat().st_size > 10_000

    # the end of the run lists what to do next, and winnow eval evaluates its newest version as the generators
    # sampled it (their max_new_tokens, chat format); the export gives the same greedy answers
    assert "Next:" in proc.stdout and f"winnow eval {run.resolve()}" in proc.stdout
    evals = {}
    for name, target in (("run", run), ("export", out)):
        path = tmp_path / f"eval-{name}.json"
        done = subprocess.run([*winnow, "eval", str(target), "--task", "basic_arithmetic", "--limit", "3", "-k", "2",
                               "--max-new-tokens", "6", "--precision", "float32", "--threads", "1", "-o", str(path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "pass@2 %" in done.stdout
        evals[name] = json.loads(path.read_text())
    assert evals["run"]["version"] == 2 and evals["run"]["decoding"]["chat"] == {"few_shot": [], "system_prompt": None}
    assert evals["run"]["decoding"]["temperature"] == 1.0  # the generators' sampling
    greedy = {name: [p["greedy"] for p in e["problems"]["basic_arithmetic"]] for name, e in evals.items()}
    assert greedy["run"] == greedy["export"]
