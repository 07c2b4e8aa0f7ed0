"""benchmarks/transport.py (``winnow bench transport``): its pure parts, and one run on tiny groups
through a real broker and the in-process queue."""

from __future__ import annotations

import json

import pytest

from winnow.kafka import ScoredGroup, decode, encode

from ..benchmark_scripts import load_benchmark

bench = load_benchmark("transport")


def test_parse_size_and_errors():
    assert bench.parse_size("16x1024") == (16, 1024)
    for bad in ("16", "0x8", "axb", "8x8x8"):
        with pytest.raises(ValueError, match="--sizes"):
            bench.parse_size(bad)


def test_make_group_has_the_requested_shape_and_survives_the_codec():
    g = bench.make_group(3, n=4, tokens=16)
    back = decode(ScoredGroup, encode(g))  # winnow's validation: one logprob and version per token
    assert len(back.samples) == 4
    assert all(len(s.response_token_ids) == len(s.behaviour_logprobs) == 16 for s in back.samples)
    assert all(0 <= t < bench.VOCAB for s in back.samples for t in s.response_token_ids)
    assert all(lp <= 0 for s in back.samples for lp in s.behaviour_logprobs)
    assert len(back.prompt_token_ids) == bench.PROMPT_TOKENS
    # copies keep the payload and get distinct request ids (distinct record keys)
    cs = bench.copies([g], 3, "t")
    assert len({c.request_id for c in cs}) == 3
    assert all(c.samples == g.samples for c in cs)


def test_step_from_metrics_skips_the_first_step(tmp_path):
    rows = [
        {"wait_s": 9.0, "compute_s": 90.0, "publish_s": 1.0, "checkpoint_s": 0.0},  # start-up: skipped
        {"wait_s": 1.0, "compute_s": 3.0, "publish_s": 0.5, "checkpoint_s": 0.5},  # 1 + 3 + 0.5 + 0.5 = 5
        {"wait_s": 0.0, "compute_s": 6.0, "publish_s": 1.0},  # 0 + 6 + 1 (no checkpoint key) = 7
        {"wait_s": 2.0, "compute_s": 4.0, "publish_s": 0.0, "checkpoint_s": 0.0},  # 6
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = bench.step_from_metrics(path)
    assert st["steps"] == 3
    assert st["step_s"] == pytest.approx(6.0)  # median of 5, 7, 6
    assert st["compute_s"] == pytest.approx(4.0)  # median of 3, 6, 4
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="at least 2 steps"):
        bench.step_from_metrics(path)


def test_bad_arguments_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "8"])
    assert "--sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--step-shape", "8x8"])
    assert "--step-shape" in capsys.readouterr().err


def test_listed_by_winnow_bench():
    from winnow import bench as winnow_bench

    assert "transport" in winnow_bench.available()


@pytest.mark.kafka
def test_tiny_run_through_broker_and_queue(kafka_bootstrap_one, tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"wait_s": 0.0, "compute_s": s}) + "\n" for s in (5.0, 2.0, 2.0)))
    out = tmp_path / "r.json"
    rc = bench.main(["--bootstrap", kafka_bootstrap_one, "--sizes", "2x8,3x16", "--groups", "5", "--trials", "2",
                     "--batch-groups", "2", "--pool", "2", "--codec-reps", "2", "--step-shape", "none",
                     "--metrics-jsonl", str(metrics), "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert [(s["n"], s["tokens"]) for s in r["sizes"]] == [(2, 8), (3, 16)]
    assert r["step_times"][0]["step_s"] == pytest.approx(2.0)
    for s in r["sizes"]:
        for name in ("kafka", "queue"):
            t = s[name]
            # every streamed group arrived whole: the consumer's byte count is the producer's
            assert t["received_bytes"] == t["sent_bytes"] > 5 * 100
            assert t["groups_per_s"] == pytest.approx(5 / t["stream_s"])
            assert 0 < t["latency_p50_s"] <= t["latency_p99_s"] <= t["stream_s"]
            assert t["stream_s"] <= t["stream_wall_s"]
        assert s["shares"][0]["kafka"] == pytest.approx(s["kafka"]["step_s"] / 2.0)
        assert s["ratios"]["step"] == pytest.approx(s["kafka"]["step_s"] / s["queue"]["step_s"])
    assert s["group_bytes"] > r["sizes"][0]["group_bytes"]  # 3x16 is bigger than 2x8
    assert "kafka/queue" in capsys.readouterr().out
