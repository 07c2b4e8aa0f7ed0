"""The pre-registered comparison of ``winnow experiment --suite prereg`` (docs/results/README.md, "Pre-registered:
..."): held-out exclusion by a canonical problem key, the placebo arm, the paired bootstrap, the report and its
criteria, and one dry run of the protocol's command on the tiny model."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from ..benchmark_scripts import load_benchmark

SUMS_1D = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
           "allow_parentheses": False, "allow_negation": False}




exp = load_benchmark("experiment")


# -- held-out exclusion ------------------------------------------------------------------------------


def test_problem_key_counts_both_orders_of_a_commutative_pair_as_one():
    key = exp.problem_key
    assert key("Calculate 7 + 60.") == key("Calculate 60 + 7.") == "sum:7,60"
    # the wording around the expression does not matter
    assert key("State the final answer to the following arithmetic problem: 60 + 7 =") == "sum:7,60"
    # a difference is a sum of signed terms: 96 - 79 = -79 + 96, but not 79 - 96
    assert key("96 - 79") == key("-79 + 96") == "sum:-79,96"
    assert key("79 - 96") == "sum:-96,79"
    assert key("5 - -3") == key("3 + 5") == "sum:3,5"  # unary signs compose
    assert key("3 * 4") == key("4 × 3") == "prod:3,4"
    assert key("2 + 3 * 4") == "expr:2 + 3 * 4" != key("3 * 4 + 2")  # mixed operators: no reordering claimed
    assert key("12 / 4") != key("4 / 12")
    assert key("What is 1.5 + 2?") == key("2 + 1.5") == "sum:1.5,2"
    assert key("Hello   World") == key("hello world") == "text:hello world"


def test_heldout_problems_are_distinct_and_excluded_from_every_training_stream(tmp_path):
    from winnow.prompts import make_source

    # one-digit sums (operands 0-10): 66 distinct problems, so 300 training draws hit the 20 held-out keys in both orders
    budget = exp.Budget(task="basic_arithmetic", task_config=SUMS_1D, task_size=300, eval_problems=20,
                        exclude_heldout=True)
    held = exp.eval_problems(budget)
    keys = {exp.problem_key(p.problem) for p in held}
    assert len(held) == 20 and len(keys) == 20
    assert exp.eval_problems(budget) == held  # deterministic
    for seed in (0, 1):
        rows, excluded = exp.training_rows(budget, seed, held)
        assert len(rows) + excluded == 300 and excluded > 0
        assert not {exp.problem_key(r["question"]) for r in rows} & keys
        # the exclusion caught the other order of a held-out problem, not only the same text
        stream = make_source({"kind": "reasoning_gym", "name": "basic_arithmetic", "size": 300,
                              "seed": 1000 + seed, "config": SUMS_1D})
        texts = {p.problem for p in held}
        swapped = [p.problem for p in stream if exp.problem_key(p.problem) in keys and p.problem not in texts]
        assert swapped
        # the run trains on that file: a jsonl source with the task's name, in the stream's order
        path = tmp_path / f"s{seed}.jsonl"
        assert exp.write_training_file(budget, seed, held, path) == excluded
        cfg = exp.up_config(exp.RunSpec("prereg", "grpo", {"preset": "grpo"}, seed), budget, "/m", "b", "p",
                            str(path))
        src = make_source(cfg["learner"]["prompts"])
        assert len(src) == len(rows)
        first = src.get(0)
        assert (first.problem, first.gold, first.task) == (rows[0]["question"], rows[0]["answer"],
                                                          "rg/basic_arithmetic")
    with pytest.raises(ValueError, match="training file"):
        exp.up_config(exp.RunSpec("prereg", "grpo", {"preset": "grpo"}, 0), budget, "/m", "b", "p")
    with pytest.raises(SystemExit, match="distinct problems"):
        exp.eval_problems(exp.Budget(task="basic_arithmetic", task_config=SUMS_1D, eval_problems=70,
                                     exclude_heldout=True))


# -- the placebo arm ---------------------------------------------------------------------------------


def test_prereg_suite_has_the_three_methods_and_the_placebo():
    specs = exp.plan(["prereg"], [0, 1, 2])
    assert [s.label for s in specs[:4]] == ["raft++", "grpo", "reinforce_rej", "placebo"]
    assert [s.seed for s in specs] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({s.run_id for s in specs}) == 12
    assert "prereg" not in {s.suite for s in exp.plan(list(exp.ALL_SUITES), [0])}  # --suite all: the paper's


def test_placebo_arm_is_raft_plus_plus_on_samples_kept_at_random(tmp_path):
    from winnow.learner.algo import AlgoConfig
    from winnow.up import Pipeline
    from winnow.verifier.rewards import load_function

    budget = exp.Budget(placebo_rate=0.25, exclude_heldout=True)
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"question": "Calculate 1 + 2.", "answer": "3"}) + "\n")
    placebo = exp.up_config(exp.RunSpec("prereg", "placebo", {"preset": "raft++", "advantage": "unit"}, 0), budget,
                            "/m", "127.0.0.1:1", "p", str(train))
    algo = AlgoConfig(**placebo["learner"]["algo"])
    # RAFT++'s filter and loss; advantage 1 on the kept samples (RAFT++ gives its correct samples max(r, 0) = 1)
    assert (algo.filter, algo.advantage, algo.loss) == ("raft", "unit", "clipped")
    assert algo.score_threshold == pytest.approx(0.75) and algo.kl_coef == AlgoConfig(preset="raft++").kl_coef
    assert placebo["up"]["start_verifier"] is True
    route = placebo["verifier"]["reward_functions"]["routes"][0]
    assert route["tasks"] == ["*"]
    score = load_function(route["functions"][0]["function"])
    draws = [score(prompt="Calculate 1 + 1.", completion=c, gold="2") for c in ("\\boxed{2}", "\\boxed{3}") * 2000]
    assert all(0.0 <= u < 1.0 for u in draws)
    # kept iff u >= 1 - rate: probability 0.25 whatever the answer (sd of a rate over 2000 draws ~0.01)
    for answer in (0, 1):
        kept = statistics.fmean(u >= algo.score_threshold for u in draws[answer::2])
        assert abs(kept - 0.25) < 0.05
    for arm in ("raft++", "grpo", "reinforce_rej"):
        data = exp.up_config(exp.RunSpec("prereg", arm, {"preset": arm}, 0), budget, "/m", "127.0.0.1:1", "p",
                             str(train))
        assert data["up"]["start_verifier"] is False and "score_threshold" not in data["learner"]["algo"]
    pipeline = Pipeline(placebo, Path("/nonexistent"), resume=False)
    pipeline.ports = {"verifier": 1, "verifier_metrics": 2, "learner_metrics": 3}
    configs = pipeline.component_configs("127.0.0.1:1", "/m")
    pipeline.validate(configs)
    assert configs["generator"]["verifier"]["default_endpoint"] == "127.0.0.1:1"  # every answer to the placebo
    assert configs["verifier"]["reward_functions"]["routes"] == [route]


def test_has_marker_is_the_verifiers_final_answer_marker():
    assert exp.has_marker("7 + 60 = 67. \\boxed{67}")
    assert exp.has_marker("The answer is 67")
    assert exp.has_marker("Answer: 67")
    assert not exp.has_marker("7 + 60 = 67")  # graded by the last-number fallback, but no marker
    assert not exp.has_marker("67")
    assert not exp.has_marker("\\boxed{67")  # unbalanced: no answer


# -- the paired bootstrap ----------------------------------------------------------------------------


def test_paired_bootstrap_hand_computed():
    # every problem differs by exactly 0.25: every resample's mean difference is 0.25
    assert exp.paired_bootstrap([1.0, 0.5, 0.25], [0.75, 0.25, 0.0]) == (0.25, 0.25, 0.25)
    # differences (0, 1): a resample of 2 problems has mean 0 (1/4), 0.5 (1/2) or 1 (1/4), so the 2.5% and
    # 97.5% quantiles of 10,000 resamples are 0 and 1, the point estimate 0.5
    assert exp.paired_bootstrap([1.0, 1.0], [1.0, 0.0]) == (0.5, 0.0, 1.0)
    # pairing: a large problem-to-problem spread shared by both models does not widen the interval
    difficulty = [0.0, 0.9, 0.1, 0.8, 0.2, 0.7]
    assert exp.paired_bootstrap([d + 0.1 for d in difficulty], difficulty) == pytest.approx((0.1, 0.1, 0.1))
    # seeded: the same inputs give the same interval
    a, b = [random.Random(1).random() for _ in range(50)], [random.Random(2).random() for _ in range(50)]
    assert exp.paired_bootstrap(a, b) == exp.paired_bootstrap(a, b)
    with pytest.raises(ValueError):
        exp.paired_bootstrap([1.0], [1.0, 0.0])


def test_paired_bootstrap_matches_the_normal_theory_and_covers_the_mean():
    import numpy as np

    rng = np.random.default_rng(7)
    # width: for n iid differences with sd sigma the 95% interval is about 2 * 1.96 * sigma / sqrt(n)
    d = rng.normal(0.3, 2.0, size=2000)
    diff, lo, hi = exp.paired_bootstrap(list(d), [0.0] * len(d))
    expected = 2 * 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert diff == pytest.approx(d.mean()) and (hi - lo) == pytest.approx(expected, rel=0.05)
    assert lo < diff < hi
    # coverage: over 400 data sets of 50 differences with mean 0.3, the 95% interval holds 0.3 about 95% of the time
    # (percentile bootstrap at n = 50: ~94%; sd of the rate over 400 data sets ~1.1 points)
    covered = 0
    for i in range(400):
        sample = rng.normal(0.3, 1.0, size=50)
        _, lo, hi = exp.paired_bootstrap(list(sample), [0.0] * 50, n_boot=1000, seed=i)
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / 400 <= 0.98


# -- the report ---------------------------------------------------------------------------------------


def _eval(correct: list[bool], counts: list[int], no_marker: list[int], k: int = 4) -> dict:
    n = len(correct)
    return {"greedy_accuracy": sum(correct) / n, "problems": n, "k": k, "greedy_correct": correct,
            "sample_correct_counts": counts, "problem_keys": [f"sum:{i},1" for i in range(n)],
            "greedy_no_marker": [False] * n, "sample_no_marker_counts": no_marker,
            "pass_at_k": {str(kk): statistics.fmean(exp.pass_at_k(k, c, kk) for c in counts) for kk in (1, 2, 4)}}


def _write_runs(results: Path, arms: dict[str, list[dict]]) -> None:
    exp.check_config(results, exp.Budget(eval_k=4, exclude_heldout=True))
    rows = [{"version": v, "time": float(v), "loss": 0.1, "acceptance_rate": 0.3, "tokens": 10.0, "entropy": 0.5,
             "kl": 0.01} for v in (1, 2)]
    for arm, evs in arms.items():
        for seed, ev in enumerate(evs):
            spec = next(s for s in exp.plan(["prereg"], [seed]) if s.label == arm)
            d = results / "runs" / spec.run_id
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (d / "eval.json").write_text(json.dumps(ev))
            (d / "summary.json").write_text(json.dumps(exp.summarize(spec, rows, ev, 10.0)))


def test_per_problem_values_and_the_seed_mean():
    ev = _eval([True, False], [4, 1], [0, 2])
    assert exp.per_problem(ev, "greedy") == [1.0, 0.0]
    assert exp.per_problem(ev, "pass@1") == [1.0, 0.25]
    assert exp.per_problem(ev, "pass@k") == [1.0, 1.0]  # pass@4 of 4 samples with >= 1 correct
    assert exp.per_problem(ev, "no_marker") == [0.0, 0.5]
    other = _eval([False, False], [0, 3], [4, 0])
    assert exp.arm_values([ev, other], "greedy") == [0.5, 0.0]
    assert exp.arm_values([ev, other], "pass@1") == [0.5, 0.5]  # (1 + 0) / 2, (0.25 + 0.75) / 2
    other["problem_keys"] = ["sum:9,9", "sum:1,1"]
    with pytest.raises(ValueError, match="same held-out problems"):
        exp.arm_values([ev, other], "greedy")


def test_report_from_run_files_decides_the_criteria(tmp_path):
    """Synthetic run files with a known answer: RAFT++ beats the placebo on 60 of 200 problems and loses none,
    GRPO equals it; the report's intervals and verdicts follow, and --report-only rebuilds them."""
    n = 200
    base = _eval([i < 60 for i in range(n)], [1 if i < 60 else 0 for i in range(n)], [1] * n)
    placebo = _eval([i < 60 for i in range(n)], [1 if i < 60 else 0 for i in range(n)], [0] * n)
    raft = _eval([i < 120 for i in range(n)], [3 if i < 120 else 0 for i in range(n)], [0] * n)
    grpo = placebo
    results = tmp_path / "prereg"
    _write_runs(results, {"raft++": [raft] * 3, "grpo": [grpo] * 3, "placebo": [placebo] * 3,
                          "reinforce_rej": [raft]})  # one seed of three: its criteria stay pending
    (results / "base_eval.json").write_text(json.dumps(base))
    assert exp.main(["--report-only", "--results", str(results)]) == 0
    text = (results / "prereg.md").read_text()
    verdicts = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in text.splitlines()
                if line.startswith("| P") or line.startswith("| S")}
    # P1: +30 points (60 of 200 problems gained, none lost): the 98.33% interval stays well above 0
    assert verdicts["P1"] == "**holds**" and verdicts["P2"] == "**does not hold**"
    assert verdicts["P3"] == "pending: 0 of 3 seeds" or verdicts["P3"].startswith("**pending: 1 of 3")
    assert verdicts["S1"] == "**holds**"  # RAFT++ 60% vs the initial model's 30%
    assert verdicts["S8"] == "**holds**"  # no-marker rate 25% -> 0% on every problem
    row = next(line for line in text.splitlines() if line.startswith("| raft++ | 0,1,2 |"))
    assert "60.0 (+30.0 [" in row  # greedy 120/200, +30 points over the initial model's 60/200
    assert "| raft++ | grpo | +30.0 [" in text
    assert "| placebo | 2 | 30.0 | - | 10 |" in text  # the runs: mean acceptance (the placebo's keep rate), wall s
    # the decision follows the interval: recomputed here by the same function at the criterion's level
    c = exp.PREREG_CRITERIA[0]
    evals, b = exp.load_prereg_evals(results)
    r = exp.check_criterion(c, evals, b)
    assert r["diff"] == pytest.approx(0.3) and r["lo"] > 0 and r["per_seed"] == pytest.approx([0.3] * 3)
    assert (results / "table.md").exists()


@pytest.mark.slow
@pytest.mark.kafka
def test_the_protocols_command_on_a_tiny_budget(tmp_path, kafka_bootstrap_one, monkeypatch):
    """The pre-registered command (docs/results/README.md) with the tiny model and a budget of 2 steps on 4
    held-out problems: four arms through the real pipeline (the placebo with its reward-function verifier), the
    evaluations, prereg.md with intervals and the criteria (pending: one seed of three).

    Two changes for the tiny model, which answers at random: one-digit sums, and dynamic sampling off (with it, RAFT++
    and Reinforce-Rej would wait for a group with a correct answer, which a random model may never give)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_one)
    results, work = tmp_path / "results", tmp_path / "work"
    (tmp_path / "tiny.yaml").write_text("learner:\n  algo:\n    dynamic_sampling: false\n")
    argv = ["--model", "tiny", "--suite", "prereg", "--seeds", "0", "--steps", "2", "--batch-groups", "2",
            "--n", "2", "--max-new-tokens", "4", "--task", "basic_arithmetic", "--task-config", json.dumps(SUMS_1D),
            "--exclude-heldout", "--eval-problems", "4", "--eval-k", "2", "--placebo-rate", "0.3",
            "--config", str(tmp_path / "tiny.yaml"), "--run-timeout", "600", "--results", str(results),
            "--work-dir", str(work)]
    assert exp.main(argv) == 0
    for arm in exp.PREREG_ARMS:
        run = results / "runs" / f"prereg-{arm.replace('+', 'p')}-s0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["train_excluded"] >= 0
        ev = json.loads((run / "eval.json").read_text())
        assert len(ev["problem_keys"]) == 4 and len(set(ev["problem_keys"])) == 4
        assert len(ev["sample_no_marker_counts"]) == 4
        up = json.loads((run / "up.json").read_text())
        assert up["learner"]["prompts"]["kind"] == "jsonl" and up["up"]["start_verifier"] is (arm == "placebo")
        assert up["learner"]["algo"]["dynamic_sampling"] is False
    text = (results / "prereg.md").read_text()
    assert "| placebo | 0 |" in text and "pending: 1 of 3 seeds" in text
