"""The learner's in-run evaluation over several named eval sets (``learner.eval.sets``): each set's accuracy is
its own share of correct greedy answers, exported as ``winnow_learner_eval_accuracy{set=NAME}`` and in the
metrics row; the single-set fields keep working."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from winnow.config import load_config
from winnow.learner.config import LearnerConfig
from winnow.learner.evaluate import EvalScores, Evaluator, SetScore, build_evaluator
from winnow.learner.metrics import LearnerMetrics
from winnow.verdict import Status


def _jsonl(path, rows):
    path.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in rows))
    return str(path)


def _cfg(tmp_path, eval_fields):
    a = _jsonl(tmp_path / "a.jsonl", [("1+1", "2"), ("2+2", "4")])
    b = _jsonl(tmp_path / "b.jsonl", [("3+3", "6"), ("4+4", "8"), ("5+5", "10")])
    return load_config(LearnerConfig, data={"learner": {"eval": {"every": 1, "prompts": 8, **eval_fields(a, b)}}})


class OneVerifier:
    """CORRECT exactly when the response is the gold."""

    def verify_batch(self, items):
        return [SimpleNamespace(status=Status.CORRECT if i.response == i.gold else Status.WRONG) for i in items]

    def close(self):
        pass


def test_two_sets_are_scored_and_exported_apart(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, lambda a, b: {"sets": [{"name": "a", "source": {"kind": "jsonl", "path": a}},
                                                  {"name": "b", "source": {"kind": "jsonl", "path": b,
                                                                           "shuffle": False}, "prompts": 2}]})
    monkeypatch.setattr("winnow.learner.evaluate.PromptFormatter", lambda tok, chat: None)  # no tokenizer needed
    ev = build_evaluator(cfg, tokenizer=None)
    assert ev.sets == [("a", 2), ("b", 2)]  # b: its own prompts=2 of 3 rows
    golds = [p.gold for p in ev.problems]
    ev._verifier = OneVerifier()
    # a: 1 of 2 right; b: 2 of 2 right (b's rows in file order: 6, 8)
    answers = [golds[0], "wrong", "6", "8"]
    monkeypatch.setattr(Evaluator, "generate", lambda self, trainer, k=0: answers)
    scores = ev(SimpleNamespace(version=3))
    assert isinstance(scores, EvalScores) and float(scores) == 0.5  # the first set's accuracy
    assert scores.sets == {"a": SetScore(0.5, None, 2), "b": SetScore(1.0, None, 2)}

    registry = CollectorRegistry()
    row = LearnerMetrics(registry).observe_eval(cfg.eval.set_name, scores, None)
    assert row == {"eval_accuracy": 0.5, "eval_accuracy.a": 0.5, "eval_accuracy.b": 1.0}
    assert registry.get_sample_value("winnow_learner_eval_accuracy", {"set": "a"}) == 0.5
    assert registry.get_sample_value("winnow_learner_eval_accuracy", {"set": "b"}) == 1.0


def test_mean_at_k_per_set(monkeypatch):
    problems = [SimpleNamespace(gold=g, task="t", problem="p", messages=None) for g in ("1", "2", "3")]
    monkeypatch.setattr("winnow.learner.evaluate.PromptFormatter", lambda tok, chat: None)
    ev = Evaluator(None, problems, verifier=OneVerifier(), k=2, sets=[("x", 1), ("y", 2)])
    greedy, sampled = ["1", "2", "0"], ["1", "0", "2", "2", "0", "0"]  # k=2, problem-major
    monkeypatch.setattr(Evaluator, "generate", lambda self, trainer, k=0: sampled if k else greedy)
    scores = ev(SimpleNamespace(version=1))
    # x: greedy 1/1, samples 1/2; y: greedy 1/2, samples (2 + 0) / 4
    assert scores.sets == {"x": SetScore(1.0, 0.5, 1), "y": SetScore(0.5, 0.5, 2)}
    assert ev.last_mean_at_k == 0.5
    with pytest.raises(ValueError, match="partition"):
        Evaluator(None, problems, sets=[("x", 1)])


def test_the_single_set_fields_keep_working(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, lambda a, b: {"set_name": "gsm", "source": {"kind": "jsonl", "path": b}, "prompts": 2})
    monkeypatch.setattr("winnow.learner.evaluate.PromptFormatter", lambda tok, chat: None)
    ev = build_evaluator(cfg, tokenizer=None)
    assert ev.sets == [("gsm", 2)]
    registry = CollectorRegistry()
    row = LearnerMetrics(registry).observe_eval("gsm", 0.25, 0.5)  # a plain float, as before
    assert row == {"eval_accuracy": 0.25, "eval_mean_at_k": 0.5}
    assert registry.get_sample_value("winnow_learner_eval_mean_at_k", {"set": "gsm"}) == 0.5


def test_set_names_are_distinct_and_a_file_source_needs_its_kind():
    from winnow.config import ConfigError

    with pytest.raises(ConfigError, match="distinct"):
        load_config(LearnerConfig, data={"learner": {"eval": {"sets": [{"name": "a"}, {"name": "a"}]}}})
    with pytest.raises(ConfigError, match="source.path needs source.kind"):
        load_config(LearnerConfig, data={"learner": {"eval": {"sets": [{"name": "a", "source": {"path": "x.jsonl"}}]}}})
