"""benchmarks/experiment.py (``winnow experiment``): its pure parts, and one real run on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ..benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]




exp = load_benchmark("experiment")


def test_pass_at_k_hand_computed():
    # n=4 samples, c=1 correct: pass@1 = 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert exp.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert exp.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # c=2, k=3: n - c = 2 < 3, so every draw of 3 holds a correct one
    assert exp.pass_at_k(4, 2, 3) == 1.0
    assert exp.pass_at_k(16, 0, 16) == 0.0
    # pass@1 is the mean correctness c/n
    assert exp.pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    with pytest.raises(ValueError, match="pass@5"):
        exp.pass_at_k(4, 1, 5)


def test_pass_at_k_matches_a_monte_carlo_draw():
    import itertools

    samples = [1, 0, 0, 1, 0, 0]  # c=2 of n=6
    draws = list(itertools.combinations(samples, 3))
    empirical = sum(any(d) for d in draws) / len(draws)
    assert exp.pass_at_k(6, 2, 3) == pytest.approx(empirical)


def test_ks_up_to():
    assert exp.ks_up_to(16) == [1, 2, 4, 8, 16]
    assert exp.ks_up_to(12) == [1, 2, 4, 8, 12]
    assert exp.ks_up_to(1) == [1]


def test_plan_suites_and_ids():
    specs = exp.plan(["main", "ablations", "staleness"], [0, 1])
    main = [s for s in specs if s.suite == "main"]
    assert [s.label for s in main[:5]] == ["raft", "raft++", "reinforce", "grpo", "reinforce_rej"]
    assert [s.seed for s in main] == [0] * 5 + [1] * 5  # seed-major
    abl = [s for s in specs if s.suite == "ablations"]
    assert all(s.algo["reward_wrong"] == -1.0 for s in abl) and len(abl) == 12
    stale = [s for s in specs if s.suite == "staleness" and s.seed == 0]
    # 4 staleness values x (plain, decoupled), minus decoupled at 0
    assert [(s.algo["max_staleness"], s.algo["decoupled"]) for s in stale] == [
        (0, False), (1, False), (1, True), (2, False), (2, True), (4, False), (4, True)]
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert all(c.isalnum() or c in "-_" for i in ids for c in i)
    with pytest.raises(ValueError, match="unknown suite"):
        exp.plan(["bogus"], [0])


def test_up_config_sets_the_run_and_keeps_the_budget():
    budget = exp.Budget(steps=3, batch_groups=2, n=2, task="basic_arithmetic", task_config={"min_terms": 2})
    spec = exp.RunSpec("ablations", "x", {"preset": "reinforce+remove_all_wrong", "reward_wrong": -1.0}, 2)
    data = exp.up_config(spec, budget, "/m", "127.0.0.1:1", "p")
    learner = data["learner"]
    assert learner["algo"] == {"max_staleness": 1, "preset": "reinforce+remove_all_wrong", "reward_wrong": -1.0}
    assert learner["seed"] == 2 and learner["prompts"]["seed"] == 1002
    assert learner["prompts"]["config"] == {"min_terms": 2}  # not merged with the default task's knobs
    assert learner["max_steps"] == 3 and learner["eval"]["every"] == 0
    assert data["generator"]["model"] == learner["model"] == "/m"
    assert data["up"]["start_verifier"] is False
    # the config is valid for every service
    from winnow.up import Pipeline

    pipeline = Pipeline(data, Path("/nonexistent"), resume=False)
    pipeline.ports = {"verifier": 1, "verifier_metrics": 2, "learner_metrics": 3}
    pipeline.validate(pipeline.component_configs("127.0.0.1:1", "/m"))


def test_other_budget_in_results_dir_is_refused(tmp_path):
    exp.check_config(tmp_path, exp.Budget(steps=3))
    exp.check_config(tmp_path, exp.Budget(steps=3))  # same budget: fine (resume)
    with pytest.raises(SystemExit, match="steps"):
        exp.check_config(tmp_path, exp.Budget(steps=4))


def test_table_mean_and_spread_over_seeds(tmp_path):
    exp.check_config(tmp_path, exp.Budget(eval_k=2))
    for seed, acc in ((0, 0.25), (1, 0.75)):
        spec = exp.RunSpec("main", "grpo", {"preset": "grpo"}, seed)
        rows = [{"version": v, "time": float(v), "loss": 0.0, "acceptance_rate": 0.5, "reward_mean": 0.5,
                 "entropy": 1.0, "kl": 0.01, "tokens": 10.0} for v in (1, 2)]
        ev = {"greedy_accuracy": acc, "pass_at_k": {"1": acc, "2": acc}, "mean_at_k": acc}
        d = tmp_path / "runs" / spec.run_id
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "eval.json").write_text(json.dumps(ev))
        (d / "summary.json").write_text(json.dumps(exp.summarize(spec, rows, ev, 30.0)))
    text = exp.table(tmp_path)
    row = next(line for line in text.splitlines() if "| grpo |" in line)
    # mean 50.0, sample sd of (25, 75) = 35.36
    assert "| 2 | 50.0 ± 35.4 |" in row
    assert "| 20 | 0.0 | 30 |" in row  # tokens trained (2 steps x 10), skipped steps, wall seconds
    files = exp.write_report(tmp_path)
    assert (tmp_path / "table.md").exists()
    assert all(f.exists() for f in files)


def test_tiny_model_run_end_to_end(tmp_path, kafka_bootstrap_one, monkeypatch):
    """Two runs of 2 steps through the real pipeline on the tiny model; the second invocation skips them."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_one)
    results, work = tmp_path / "results", tmp_path / "work"
    argv = ["--model", "tiny", "--steps", "2", "--batch-groups", "2", "--n", "2", "--max-new-tokens", "4",
            "--eval-problems", "3", "--eval-k", "2", "--seeds", "0", "--only", "grpo,reinforce_rej",
            "--results", str(results), "--work-dir", str(work)]
    assert exp.main(argv) == 0
    for run_id in ("main-grpo-s0", "main-reinforce_rej-s0"):
        summary = json.loads((results / "runs" / run_id / "summary.json").read_text())
        assert summary["steps"] == 2
        ev = json.loads((results / "runs" / run_id / "eval.json").read_text())
        assert ev["weights_version"] == 2 and ev["problems"] == 3
        assert len(ev["sample_correct_counts"]) == 3 and set(ev["pass_at_k"]) == {"1", "2"}
        assert math.isfinite(summary["greedy_accuracy"])
        # the run's weights and checkpoints (GBs per run at real sizes) are removed once it is evaluated
        assert (work / run_id / "metrics.jsonl").exists() and not (work / run_id / "weights").exists()
        assert not (work / run_id / "checkpoints").exists()
    base = json.loads((results / "base_eval.json").read_text())
    assert base["problems"] == 3
    table = (results / "table.md").read_text()
    assert "| main | grpo | 1 |" in table and "| main | reinforce_rej | 1 |" in table
    assert (results / "reward.png").exists() and (results / "kl.png").exists()
    mtime = (results / "runs" / "main-grpo-s0" / "summary.json").stat().st_mtime
    assert exp.main(argv) == 0  # resumed: nothing left to run
    assert (results / "runs" / "main-grpo-s0" / "summary.json").stat().st_mtime == mtime


def test_only_filters_and_orders_within_a_seed(tmp_path, capsys):
    argv = ["--dry-run", "--seeds", "0,1", "--only", "grpo,raft", "--results", str(tmp_path)]
    assert exp.main(argv) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["main-grpo-s0", "main-raft-s0", "main-grpo-s1", "main-raft-s1"]
    assert not (tmp_path / "config.json").exists()  # a dry run records nothing


def test_entropy_and_kl_skip_steps_that_trained_nothing():
    spec = exp.RunSpec("main", "reinforce_rej", {"preset": "reinforce_rej"}, 0)
    rows = [{"version": 1, "time": 0.0, "loss": 0.1, "tokens": 10.0, "entropy": 0.8, "kl": 0.01},
            {"version": 2, "time": 1.0, "loss": 0.0, "tokens": 0.0, "skipped": 1.0, "entropy": 0.0, "kl": 0.0}]
    s = exp.summarize(spec, rows, {"greedy_accuracy": 0.5}, 2.0)
    # the last step trained nothing: its logged 0 entropy/KL is not a measurement
    assert s["entropy_last"] == 0.8 and s["kl_last"] == 0.01 and s["skipped_steps"] == 1


def _gsm8k_file(path: Path, n: int, start: int = 0) -> Path:
    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
             "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_file_trains_and_eval_data_file_evaluates(tmp_path):
    train, test = _gsm8k_file(tmp_path / "train.jsonl", 12), _gsm8k_file(tmp_path / "test.jsonl", 9, start=100)
    budget = exp.Budget(data=str(train), eval_data=str(test), eval_problems=4)
    problems = exp.eval_problems(budget)
    assert [p.gold for p in problems] == ["102", "103", "104", "105"]  # the first rows, GSM8K golds after ####
    src = exp.up_config(exp.RunSpec("main", "grpo", {"preset": "grpo"}, 3), budget, "/m", "b", "p")["learner"]["prompts"]
    assert src == {"kind": "jsonl", "path": str(train), "shuffle": True, "split": "train", "holdout": 0,
                   "shuffle_seed": 1003}
    described = exp.describe_data(json.loads(json.dumps(exp.asdict(budget))))
    assert described.startswith("training data train.jsonl") and "first 4 problems of test.jsonl" in described
    assert "chain_sum" in exp.describe_data(exp.asdict(exp.Budget()))
    with pytest.raises(SystemExit, match="has 9 rows"):
        exp.eval_problems(exp.Budget(data=str(train), eval_data=str(test), eval_problems=10))


def test_data_file_without_eval_data_holds_out_the_same_rows_for_every_seed(tmp_path):
    from winnow.prompts import make_source

    train = _gsm8k_file(tmp_path / "train.jsonl", 20)
    budget = exp.Budget(data=str(train), eval_problems=5)
    held = {p.prompt_id for p in exp.eval_problems(budget)}
    assert len(held) == 5
    for seed in (0, 1):
        cfg = exp.up_config(exp.RunSpec("main", "raft", {"preset": "raft"}, seed), budget, "/m", "b", "p")
        source = make_source(cfg["learner"]["prompts"])
        trained_ids = {source.get(i).prompt_id for i in range(len(source))}
        assert len(trained_ids) == 15 and not trained_ids & held
    orders = [[make_source(exp.up_config(exp.RunSpec("main", "raft", {"preset": "raft"}, seed), budget, "/m", "b",
                                         "p")["learner"]["prompts"]).get(i).prompt_id for i in range(15)]
              for seed in (0, 1)]
    assert orders[0] != orders[1]  # issue 24: each seed trains on its own order of the same rows


def test_data_flags_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        exp.parse_args(["--data", str(tmp_path / "missing.jsonl")])
    assert "--data" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SystemExit):
        exp.parse_args(["--eval-data", str(tmp_path / "x.csv")])
    assert "--eval-data" in capsys.readouterr().err


def test_results_dir_from_before_a_new_budget_field_is_resumed(tmp_path):
    exp.check_config(tmp_path, exp.Budget(steps=3))
    cfg = json.loads((tmp_path / "config.json").read_text())
    for new in ("data", "eval_data"):
        del cfg["budget"][new]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    exp.check_config(tmp_path, exp.Budget(steps=3))  # the missing fields had their defaults
    with pytest.raises(SystemExit, match="data"):
        exp.check_config(tmp_path, exp.Budget(steps=3, data=str(tmp_path / "t.jsonl")))


def test_base_evaluation_on_a_data_file(tmp_path):
    test = _gsm8k_file(tmp_path / "test.jsonl", 5)
    argv = ["--model", "tiny", "--data", str(test), "--eval-data", str(test), "--eval-problems", "2",
            "--eval-k", "2", "--max-new-tokens", "4", "--base-only", "--results", str(tmp_path / "r"),
            "--work-dir", str(tmp_path / "w")]
    assert exp.main(argv) == 0
    base = json.loads((tmp_path / "r" / "base_eval.json").read_text())
    assert base["problems"] == 2 and len(base["sample_correct_counts"]) == 2
    assert json.loads((tmp_path / "r" / "config.json").read_text())["budget"]["eval_data"] == str(test)


def test_the_gsm8k_example_config_is_valid_for_every_service(tmp_path):
    from winnow.config import read_config_file
    from winnow.up import Pipeline

    train = _gsm8k_file(tmp_path / "train.jsonl", 4)
    budget = exp.Budget(data=str(train), eval_problems=2, max_new_tokens=320,
                        extra=read_config_file(REPO / "examples" / "gsm8k_experiment.yaml"))
    data = exp.up_config(exp.RunSpec("main", "raft++", {"preset": "raft++"}, 0), budget, "/m", "127.0.0.1:1", "p")
    assert data["generator"]["chat"]["few_shot"] == [] and data["learner"]["optim"]["micro_batch_tokens"] == 512
    pipeline = Pipeline(data, Path("/nonexistent"), resume=False)
    pipeline.ports = {"verifier": 1, "verifier_metrics": 2, "learner_metrics": 3}
    configs = pipeline.component_configs("127.0.0.1:1", "/m")
    pipeline.validate(configs)
    # one prompt format, read by every service: the learner formats prompts as the generators
    assert pipeline.shared("127.0.0.1:1", "/m")["chat"]["few_shot"] == [] and "chat" not in configs["generator"]
    assert configs["learner"]["request_timeout_s"] == 3600
