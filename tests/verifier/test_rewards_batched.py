"""Batched (TRL-style) reward functions are called once per batch in the verifier's worker pool.

A function declared ``batched: true`` (``fn(prompts, completions, **kw) -> list``) gets the lists of every item of
its route in one ``RewardEngine.verify_batch`` call, as TRL calls ``reward_funcs`` once per batch; per-item functions
of the same route still run per item, and the scores are those the one-item calls give. A failing batched call is
every item's error, never a zero.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from winnow.verdict import Item, Status
from winnow.verifier.config import RewardFunctions
from winnow.verifier.rewards import RewardEngine

FUNCTIONS = textwrap.dedent('''
    import os

    def lengths(prompts, completions, **kwargs):     # TRL batched: lists in, a list out; logs each call's size
        with open(os.environ["WINNOW_TEST_CALLS"], "a") as f:
            f.write(f"{len(completions)}\\n")
        return [len(c) for c in completions]

    def bonus(completion, gold):                     # a per-item function in the same route
        return 100.0 if completion == gold else 0.0

    def broken(completions):
        raise RuntimeError("bug in a batched reward")

    def short(completions):
        return [1.0]                                 # one value for a whole batch: wrong length
''')


@pytest.fixture
def engine_for(tmp_path: Path, monkeypatch):
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    monkeypatch.setenv("WINNOW_TEST_CALLS", str(tmp_path / "calls.txt"))  # inherited by the zygote
    engines: list[RewardEngine] = []

    def make(functions: list[dict]) -> RewardEngine:
        fns = [{**f, "function": f"{tmp_path / 'fns.py'}:{f['function']}"} for f in functions]
        cfg = RewardFunctions(routes=[{"tasks": ["t"], "functions": fns, "pass_score": 100.0},
                                      {"tasks": ["single"], "functions": fns}], workers=2, timeout_s=10, memory_mb=512)
        engines.append(RewardEngine(cfg, check=False))
        return engines[-1]

    yield make, tmp_path / "calls.txt"
    for e in engines:
        e.close()


def _items(task: str, n: int) -> list[Item]:
    return [Item(id=str(i), response="x" * (i + 1), gold="xxx", task=task) for i in range(n)]


def test_a_batched_function_is_called_once_per_batch(engine_for):
    make, calls = engine_for
    engine = make([{"function": "lengths", "batched": True}, {"function": "bonus", "weight": 1.0}])
    verdicts = engine.verify_batch(_items("t", 5))
    assert calls.read_text().split() == ["5"]  # one call for the five completions
    # lengths 1..5, and the bonus 100 where the completion is the gold "xxx" (item 2)
    assert [v.score for v in verdicts] == [1.0, 2.0, 103.0, 4.0, 5.0]
    assert [v.status for v in verdicts] == [Status.WRONG] * 2 + [Status.CORRECT] + [Status.WRONG] * 2  # pass_score 100
    assert [v.id for v in verdicts] == ["0", "1", "2", "3", "4"]
    # the same scores as one item per call (each of these is a batch of one)
    one_by_one = [engine.verify_batch([it])[0].score for it in _items("t", 5)]
    assert one_by_one == [v.score for v in verdicts]
    assert calls.read_text().split() == ["5", "1", "1", "1", "1", "1"]


def test_a_failing_batched_call_is_every_items_error(engine_for):
    make, _ = engine_for
    for name, detail in [("broken", "RuntimeError: bug in a batched reward"), ("short", "one value per completion")]:
        engine = make([{"function": name, "batched": True}, {"function": "bonus"}])
        verdicts = engine.verify_batch(_items("t", 3))
        assert [(v.status, v.score) for v in verdicts] == [(Status.ERROR, None)] * 3
        assert all(detail in v.detail for v in verdicts)


def test_mixed_routes_keep_order_and_batch_by_route(engine_for, monkeypatch):
    make, calls = engine_for
    engine = make([{"function": "lengths", "batched": True}])
    items = _items("t", 3) + _items("single", 2) + _items("t", 2)
    verdicts = engine.verify_batch(items)
    assert [v.score for v in verdicts] == [1.0, 2.0, 3.0, 1.0, 2.0, 1.0, 2.0]
    assert sorted(calls.read_text().split()) == ["2", "5"]  # route "t": five items at once; route "single": two

    import winnow.verifier.rewards as rewards

    monkeypatch.setattr(rewards, "_BATCH_ITEMS", 2)  # a batch larger than a job holds is cut in chunks
    calls.write_text("")
    assert [v.score for v in engine.verify_batch(_items("t", 5))] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert sorted(calls.read_text().split()) == ["1", "2", "2"]  # chunks of 2, 2, 1 (two workers: any order)
