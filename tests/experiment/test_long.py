"""``winnow experiment --suite long --curve-every K``: the paper's dynamics over a longer budget (issue 24 item 3).
Each run keeps its policy every K steps (``learner.weights.keep_every``), the script evaluates each kept version on
the held-out problems (``curve.json``), and ``long.md`` / ``curve.png`` report accuracy, KL and entropy per step with
paired intervals over problems."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ..benchmark_scripts import load_benchmark

SUMS_1D = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
           "allow_parentheses": False, "allow_negation": False}




exp = load_benchmark("experiment")
N = 100


def _greedy(n_correct: int, version: int | None = None) -> dict:
    ev = {"greedy_accuracy": n_correct / N, "problems": N, "k": 0, "greedy_correct": [i < n_correct for i in range(N)],
          "greedy_no_marker": [False] * N, "problem_keys": [f"sum:{i},1" for i in range(N)], "eval_s": 1.0,
          "sample_correct_counts": [], "sample_no_marker_counts": []}
    if version is not None:
        ev["weights_version"] = version
    return ev


def _write_long(results: Path, arms: dict[str, dict[int, int]], kl: dict[str, float]) -> None:
    """One seed per arm: ``arms[arm][version]`` = problems right (the last version is also the final eval), every
    point with held-out KL ``kl[arm]`` and entropy 0.4, learner rows with KL ``kl[arm] / 2`` and entropy 0.5."""
    exp.check_config(results, exp.Budget(steps=6, eval_k=0, curve_every=2, exclude_heldout=True))
    for arm, curve in arms.items():
        spec = next(s for s in exp.plan(["long"], [0]) if s.label == arm)
        d = results / "runs" / spec.run_id
        d.mkdir(parents=True)
        final = max(curve)
        rows = [{"version": v, "time": float(v), "loss": 0.1, "acceptance_rate": 0.3, "tokens": 10.0,
                 "entropy": 0.5, "kl": kl[arm] / 2} for v in range(1, final + 1)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        points = [{"version": v, **_greedy(c), "heldout_kl": kl[arm], "heldout_entropy": 0.4}
                  for v, c in sorted(curve.items())]
        (d / "curve.json").write_text(json.dumps({"every": 2, "points": points}))
        ev = _greedy(curve[final], version=final)
        (d / "eval.json").write_text(json.dumps(ev))
        (d / "summary.json").write_text(json.dumps(exp.summarize(spec, rows, ev, 10.0)))


def test_long_suite_runs_the_three_methods_and_is_not_part_of_all():
    specs = exp.plan(["long"], [0])
    assert [s.label for s in specs] == ["raft++", "grpo", "reinforce_rej"]
    assert all(s.algo == {"preset": s.label} and s.run_id.startswith("long-") for s in specs)
    assert "long" not in exp.ALL_SUITES


def test_curve_every_keeps_those_versions_in_the_runs_weight_store():
    spec = exp.plan(["long"], [0])[0]
    data = exp.up_config(spec, exp.Budget(steps=90, curve_every=10), "model", "b:1", "p")
    assert data["learner"]["weights"]["keep_every"] == 10 and data["learner"]["max_steps"] == 90
    from learner.config import LearnerConfig

    LearnerConfig.model_validate(data["learner"])  # a valid learner config
    assert exp.up_config(spec, exp.Budget(), "model", "b:1", "p")["learner"]["weights"]["keep_every"] == 0
    with pytest.raises(SystemExit):
        exp.parse_args(["--curve-every", "-1"])


def test_long_report_from_run_files(tmp_path):
    """Hand-made curves: RAFT++ 40 -> 60 -> 60 -> 60 of 100 (leads early, plateaus), GRPO 40 -> 45 -> 55 -> 62 (catches
    up), the initial model 40; KL 0.02 and 0.04. The report's numbers, intervals and gain per KL follow."""
    results = tmp_path / "long"
    _write_long(results, {"raft++": {2: 60, 4: 60, 6: 60}, "grpo": {2: 45, 4: 55, 6: 62}},
                {"raft++": 0.02, "grpo": 0.04})
    (results / "base_eval.json").write_text(json.dumps(_greedy(40)))
    (results / "base_curve.json").write_text(json.dumps({**_greedy(40), "heldout_kl": 0.0, "heldout_entropy": 0.6}))
    assert exp.main(["--report-only", "--results", str(results)]) == 0
    text = (results / "long.md").read_text()
    # each step has a row in three tables: accuracy vs the initial model, between arms, KL / entropy
    step2 = [line for line in text.splitlines() if line.startswith("| 2 |")]
    last = [line for line in text.splitlines() if line.startswith("| 6 |")]
    assert len(step2) == 3 and len(last) == 2  # the last step has no change to itself: no row
    assert "| 2 | +0.0 [+0.0, +0.0] | +17.0 [" in text  # RAFT++ flat from step 2 to 6, GRPO +17 (45 -> 62)
    assert "| 0 (initial) | 40.0 | 40.0 |" in text
    # step 2: RAFT++ 60% (+20 over the initial model: 20 problems gained, none lost -> the interval is above 0)
    assert "60.0 (+20.0 [+" in step2[0] and "45.0 (+5.0 [+" in step2[0]
    assert "+15.0 [" in step2[1]  # RAFT++ - GRPO at step 2: 60 - 45
    assert "-2.0 [" in last[1]  # GRPO overtook RAFT++ by the end: 60 - 62
    assert "| initial model | 0 | 0 | 0.600 |" in text
    assert "| raft++ | 6 | 0.0200 | 0.400 | 0.0100 | +20.0 | 1000 |" in text  # 20 pp / held-out KL 0.02
    assert "| grpo | 6 | 0.0400 | 0.400 | 0.0200 | +22.0 | 550 |" in text  # 22 pp / 0.04
    # the interval itself, recomputed by the same bootstrap: 20 gained of 100, none lost
    d, lo, hi = exp.paired_bootstrap([float(i < 60) for i in range(N)], [float(i < 40) for i in range(N)])
    assert d == pytest.approx(0.2) and 0.1 < lo < 0.2 < hi < 0.3
    assert f"60.0 (+20.0 [{100 * lo:+.1f}, {100 * hi:+.1f}])" in step2[0]
    assert (results / "curve.png").stat().st_size > 1000 if importlib.util.find_spec("matplotlib") else True
    other = _greedy(40)
    other["problem_keys"] = [f"sum:{i},2" for i in range(N)]  # another held-out set: nothing is paired
    (results / "base_eval.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not evaluated on base_eval.json's problems"):
        exp.long_report(results)


@pytest.mark.slow
@pytest.mark.kafka
def test_long_suite_end_to_end_on_the_tiny_model(tmp_path, kafka_bootstrap_one, monkeypatch):
    """Three arms x 4 steps through the real pipeline with ``--curve-every 2``: each run keeps version 2 past the
    store's pruning, evaluates it (``curve.json``) and the final weights; long.md reports both steps."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_one)
    results, work = tmp_path / "results", tmp_path / "work"
    (tmp_path / "tiny.yaml").write_text("learner:\n  algo:\n    dynamic_sampling: false\n  weights:\n    keep: 1\n")
    argv = ["--model", "tiny", "--suite", "long", "--seeds", "0", "--steps", "4", "--curve-every", "2",
            "--batch-groups", "2", "--n", "2", "--max-new-tokens", "4", "--task", "basic_arithmetic",
            "--task-config", json.dumps(SUMS_1D), "--exclude-heldout", "--eval-problems", "4", "--eval-k", "2",
            "--config", str(tmp_path / "tiny.yaml"), "--run-timeout", "600", "--results", str(results),
            "--work-dir", str(work)]
    assert exp.main(argv) == 0
    for arm in exp.LONG_ARMS:
        run = results / "runs" / f"long-{arm.replace('+', 'p')}-s0"
        curve = json.loads((run / "curve.json").read_text())
        # version 2 kept although the store keeps only the newest; 4 the final one
        assert [p["version"] for p in curve["points"]] == [2, 4]
        for pt in curve["points"]:
            assert len(pt["greedy_correct"]) == 4 and len(pt["kl_sums"]) == 4 and pt["drift_problems"] == 4
            assert pt["heldout_kl"] == pytest.approx(sum(pt["kl_sums"]) / sum(pt["sample_tokens"]))
            assert pt["heldout_kl"] >= 0 and pt["heldout_entropy"] > 0
        assert json.loads((run / "eval.json").read_text())["weights_version"] == 4
    base0 = json.loads((results / "base_curve.json").read_text())  # the initial model against itself: KL exactly 0
    assert base0["heldout_kl"] == 0.0 and base0["heldout_entropy"] > 0 and len(base0["kl_sums"]) == 4
    text = (results / "long.md").read_text()
    assert any(line.startswith("| 2 |") for line in text.splitlines())
    assert any(line.startswith("| 4 |") for line in text.splitlines())


def test_completion_logprobs_equal_the_samplers_and_the_kl_of_a_model_to_itself_is_zero():
    """The held-out KL's log-probs: teacher-forced over right-padded rows of different lengths, they equal the
    behaviour log-probs the engine recorded while sampling (float32 tiny model); KL(pi || pi) is exactly 0, the
    entropy positive, KL(pi || another model) positive on every row."""
    import torch

    from winnow.hf_engine import HFEngine
    from winnow.learner.tiny import build_tiny_model_and_tokenizer
    from winnow.sampling import SamplingConfig

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    other, _ = build_tiny_model_and_tokenizer(seed=1)
    prompts = [[5, 17, 40], [7, 7, 200, 31, 2, 9, 9], [9]]
    out = HFEngine(model, tok).generate(prompts, 2, SamplingConfig(max_new_tokens=10, seed=0))
    ps, cs = [p for p, g in zip(prompts, out, strict=True) for _ in g], [c.token_ids for g in out for c in g]
    got = exp.completion_logprobs(model, ps, cs, batch=4)
    for c, lp in zip((c for g in out for c in g), got, strict=True):
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(c.logprobs), atol=1e-4, rtol=1e-4)
    again = exp.completion_logprobs(model, ps, cs, batch=1)
    assert sum(map(sum, got)) - sum(map(sum, again)) == pytest.approx(0.0, abs=1e-4)
    # prompts sharing a few-shot prefix: the batch runs it once (a KV cache), the rows equal their plain forward
    common = list(range(40, 52))
    shared_ps = [common + p for p in ps]
    out2 = HFEngine(model, tok).generate([common + p for p in prompts], 2, SamplingConfig(max_new_tokens=10, seed=1))
    shared_cs = [c.token_ids for g in out2 for c in g]
    batched = exp.completion_logprobs(model, shared_ps, shared_cs, batch=6)
    plain = exp.completion_logprobs(model, shared_ps, shared_cs, batch=1)
    for c, a, b in zip((c for g in out2 for c in g), batched, plain, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(a), torch.tensor(c.logprobs), atol=1e-4, rtol=1e-4)
    kl_self, ent = exp.completion_kl_entropy(model, model, ps, cs)
    assert kl_self == [0.0] * len(cs) and all(e > 0 for e in ent)
    kl_other, ent2 = exp.completion_kl_entropy(model, other, ps, cs)
    assert all(k > 0 for k in kl_other) and ent2 == pytest.approx(ent)


def test_the_exact_kl_along_samples_agrees_with_the_log_ratio_estimate():
    """The chain rule the held-out KL relies on: over responses sampled from pi, the mean of the per-position exact
    KL sums equals the mean of log pi(y) - log q(y) (both estimate KL(pi || q) of the sequence), within 4 standard
    errors of the noisier one; the exact one is the less variable."""
    import statistics

    from winnow.hf_engine import HFEngine
    from winnow.learner.tiny import build_tiny_model_and_tokenizer
    from winnow.sampling import SamplingConfig

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    other, _ = build_tiny_model_and_tokenizer(seed=1)
    prompt = [5, 17, 40]
    out = HFEngine(model, tok).generate([prompt], 300, SamplingConfig(max_new_tokens=6, seed=3))[0]
    ps, cs = [prompt] * len(out), [c.token_ids for c in out]
    exact, _ = exp.completion_kl_entropy(model, other, ps, cs, batch=64)
    ratio = [sum(a) - sum(b) for a, b in zip(exp.completion_logprobs(model, ps, cs, batch=64),
                                             exp.completion_logprobs(other, ps, cs, batch=64), strict=True)]
    se = statistics.stdev(ratio) / len(ratio) ** 0.5
    assert abs(statistics.fmean(exact) - statistics.fmean(ratio)) < 4 * se
    assert statistics.stdev(exact) < statistics.stdev(ratio)
