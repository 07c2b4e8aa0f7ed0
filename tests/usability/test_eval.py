"""``winnow eval``: the pass@k estimator by hand, the per-(set, task) rows from known verdicts, what a run
directory resolves to (its newest published version, ``--version N``, the generators' decoding), and the
command end to end on the tiny model, its greedy texts cross-checked against the generators' engine."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import yaml

from winnow.config import ConfigError
from winnow.evaluation import (
    evaluate_sets,
    format_table,
    pass_at_k,
    resolve_target,
    source_configs,
)
from winnow.prompts import Problem
from winnow.sampling import Completion
from winnow.verdict import Status


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # 1 - C(3,1)/C(4,1) = 1 - 3/4
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(4, 2, 3) == 1.0  # n - c = 2 < k = 3: every 3-subset holds a correct one
    assert pass_at_k(8, 0, 8) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_the_experiment_benchmark_uses_the_same_estimator(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_experiment_for_eval", Path(__file__).resolve().parents[2] / "benchmarks" / "experiment.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    assert mod.pass_at_k is pass_at_k  # one function


class ScriptedEngine:
    """Returns, per prompt, its scripted texts: greedy first, then the k samples."""

    def __init__(self, script: dict[str, tuple[str, list[str]]]) -> None:
        self.script = script
        self.calls: list[tuple[int, float]] = []

    def generate(self, prompts, n, sampling):
        self.calls.append((n, sampling.temperature))
        out = []
        for p in prompts:
            greedy, samples = self.script[p]
            texts = [greedy] if sampling.temperature == 0 else samples
            out.append([Completion(token_ids=[1], logprobs=[0.0], finish_reason="length" if t.endswith("...") else
                                   "stop", text=t) for t in texts[:n]])
        return out


class ExactVerifier:
    def verify_batch(self, items):
        return [SimpleNamespace(status=Status.CORRECT if i.response == i.gold else Status.WRONG) for i in items]


def test_rows_per_task_from_known_verdicts():
    problems = [Problem("a/0", "p0", "1", "rg/add"), Problem("a/1", "p1", "2", "rg/add"),
                Problem("a/2", "p2", "3", "rg/mul")]
    engine = ScriptedEngine({
        "p0": ("1", ["1", "0", "0", "0"]),  # greedy right, 1 of 4 samples right
        "p1": ("so the answer is...", ["2", "2", "0", "0"]),  # greedy cut off, 2 of 4
        "p2": ("3", ["0", "0", "0", "0"]),  # greedy right, 0 of 4
    })
    out = evaluate_sets(engine, lambda text, messages: text, ExactVerifier(), [("set", problems)], k=4,
                        max_new_tokens=8, temperature=0.7, top_p=1.0, seed=0)
    assert engine.calls == [(1, 0.0), (4, 0.7)]
    rows = {r["task"]: r for r in out["rows"]}
    add, mul, every = rows["rg/add"], rows["rg/mul"], rows["all"]
    assert add["greedy_accuracy"] == 0.5 and add["truncated"] == 1 and mul["truncated"] == 0
    # pass@1 = mean(c / 4): add (1/4 + 2/4) / 2 = 0.375; pass@2: (1 - C(3,2)/C(4,2)) = 0.5, (1 - C(2,2)/C(4,2)) = 5/6
    assert add["pass_at_k"]["1"] == pytest.approx(0.375) and add["mean_at_k"] == pytest.approx(0.375)
    assert add["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert add["pass_at_k"]["4"] == pytest.approx(1.0)
    assert mul["pass_at_k"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert every["problems"] == 3 and every["greedy_accuracy"] == pytest.approx(2 / 3)
    assert every["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert [p["correct_of_k"] for p in out["problems"]["set"]] == [1, 2, 0]
    table = format_table(out["rows"], 4)
    assert table.splitlines()[0].split() == ["set", "task", "problems", "greedy", "%", "truncated", "pass@1", "%",
                                             "pass@2", "%", "pass@4", "%"]
    assert "66.7" in table


def test_sources_from_files_and_tasks(tmp_path):
    assert source_configs([str(tmp_path / "gsm8k_test.jsonl")], ["basic_arithmetic"], limit=5, task_size=100,
                          seed=3) == [
        ("gsm8k_test", {"kind": "jsonl", "path": str(tmp_path / "gsm8k_test.jsonl"), "shuffle": False, "limit": 5}),
        ("basic_arithmetic", {"kind": "reasoning_gym", "name": "basic_arithmetic", "size": 5, "seed": 3}),
    ]
    with pytest.raises(ConfigError, match="--data"):
        source_configs(["x.csv"], [], limit=None, task_size=1, seed=0)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        source_configs([], [], limit=None, task_size=1, seed=0)


def _fake_run(tmp_path, tiny: str, versions=(1, 2)):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    (run / "config").mkdir(parents=True)
    (run / "learner-config.json").write_text(json.dumps({"model": tiny, "weights": {"dir": str(run / "weights")},
                                                         "checkpoint": {"dir": str(run / "checkpoints")}}))
    (run / "config" / "generator-0.yaml").write_text(yaml.safe_dump({"generator": {
        "chat": {"few_shot": [], "system_prompt": None}, "numerics": {"precision": "float32"},
        "sampling": {"temperature": 0.9, "max_new_tokens": 5}, "verifier": {"endpoints": {"rg/*": "h:1"}}}}))
    state = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    for v in versions:
        (run / "weights" / f"v{v:08d}").mkdir(parents=True)
        save_file({k: t.clone().contiguous() + (0.01 * v if t.is_floating_point() else 0) for k, t in state.items()
                   if k != "lm_head.weight"}, str(run / "weights" / f"v{v:08d}" / "model.safetensors"))
    del torch
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from winnow.learner.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


def test_a_run_directory_resolves_to_its_newest_version_and_the_generators_decoding(tmp_path, tiny):
    run = _fake_run(tmp_path, tiny)
    target = resolve_target(str(run))
    assert target.version == 2 and target.weights.endswith("v00000002/model.safetensors")
    assert target.model_dir == tiny and target.numerics == {"precision": "float32"}
    assert target.sampling["max_new_tokens"] == 5 and target.verifier["endpoints"] == {"rg/*": "h:1"}
    assert resolve_target(str(run), 1).weights.endswith("v00000001/model.safetensors")
    assert resolve_target(str(run), 0).weights is None  # the base model
    with pytest.raises(ConfigError, match=r"--version 7 is not in .*available: \[1, 2\]"):
        resolve_target(str(run), 7)
    assert resolve_target(tiny).model_dir == tiny and resolve_target(tiny).version is None


def test_the_math_verifier_of_an_up_run_is_run_in_process(tmp_path, tiny):
    run = _fake_run(tmp_path, tiny)
    gen = yaml.safe_load((run / "config" / "generator-0.yaml").read_text())
    gen["generator"]["verifier"]["default_endpoint"] = "127.0.0.1:50051"
    (run / "config" / "generator-0.yaml").write_text(yaml.safe_dump(gen))
    (run / "config" / "verifier.yaml").write_text(yaml.safe_dump({"verifier": {"host": "127.0.0.1", "port": 50051,
                                                                                "workers": 2, "timeout_s": 3.0}}))
    routing = resolve_target(str(run)).verifier
    assert routing["default_endpoint"] == "" and routing["in_process_workers"] == 2  # stopped with the run
    assert routing["in_process_timeout_s"] == 3.0 and routing["endpoints"] == {"rg/*": "h:1"}  # others kept


def test_winnow_eval_end_to_end_matches_the_engine(tmp_path, tiny, capsys):
    """The command on a run's version; its greedy texts are what the generators' engine writes for the same
    prompts and weights (an independent decode), and its accuracy is the share the verifier accepts."""
    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.cli import main
    from winnow.hf_engine import HFEngine
    from winnow.sampling import SamplingConfig
    from winnow.scoring import in_process_verifier
    from winnow.verdict import Item

    run = _fake_run(tmp_path, tiny)
    data = tmp_path / "mini.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(3)))
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(data), "-k", "2", "--verifier", "in-process", "--threads", "1",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{run} version 2" in printed and "pass@2 %" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())
    assert result["version"] == 2 and result["decoding"]["max_new_tokens"] == 5
    assert result["decoding"]["precision"] == "float32" and result["decoding"]["temperature"] == 0.9
    (row,) = result["rows"]
    assert row["set"] == "mini" and row["problems"] == 3 and set(row["pass_at_k"]) == {"1", "2"}

    engine = HFEngine.from_pretrained(tiny, dtype="float32")
    engine.load_weights(str(run / "weights" / "v00000002" / "model.safetensors"), version=2)
    fmt = PromptFormatter(engine.tokenizer, ChatFormat(few_shot=[], system_prompt=None))
    problems = result["problems"]["mini"]
    prompts = [fmt(f"What is {i} + 1?", None) for i in range(3)]
    texts = [g[0].text for g in engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=5))]
    assert [p["greedy"] for p in problems] == texts
    verifier = in_process_verifier()
    try:
        verdicts = verifier.verify_batch([Item(id=str(i), response=t, gold=str(i + 1), task="mini")
                                          for i, t in enumerate(texts)])
    finally:
        verifier.close()
    assert row["greedy_accuracy"] == pytest.approx(sum(v.status == Status.CORRECT for v in verdicts) / 3)
    assert not math.isnan(row["pass_at_k"]["1"])
