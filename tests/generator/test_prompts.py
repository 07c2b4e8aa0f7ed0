"""Prompt sources: deterministic positions, epochs, held-out split, GSM8K golds, clear errors."""

from __future__ import annotations

import json

import pytest

from winnow.prompts import (
    JsonlSourceConfig,
    Problem,
    PromptSourceError,
    ReasoningGymSourceConfig,
    gsm8k_gold,
    make_source,
    parse_source_config,
)


def test_reasoning_gym_deterministic_per_seed():
    cfg = {
        "kind": "reasoning_gym",
        "name": "basic_arithmetic",
        "size": 20,
        "seed": 7,
        "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    }
    a, b = make_source(cfg), make_source(cfg)
    other = make_source({**cfg, "seed": 8})
    assert len(a) == 20
    assert [a[i] for i in range(20)] == [b[i] for i in range(20)]
    assert [a[i].problem for i in range(20)] != [other[i].problem for i in range(20)]
    p = a.get(3)
    assert isinstance(p, Problem)
    assert p.prompt_id == "rg/basic_arithmetic/3"
    assert p.task == "rg/basic_arithmetic"
    assert isinstance(p.gold, str) and p.gold.lstrip("-").replace(".", "").isdigit()


def test_reasoning_gym_mixture_keeps_task_per_item():
    src = make_source(
        ReasoningGymSourceConfig(
            name="composite",
            size=30,
            seed=1,
            mixture=[{"name": "chain_sum"}, {"name": "basic_arithmetic"}],
        )
    )
    tasks = {src[i].task for i in range(30)}
    assert tasks == {"rg/chain_sum", "rg/basic_arithmetic"}


def test_reasoning_gym_bad_config_names_dataset():
    with pytest.raises(PromptSourceError, match="no_such_dataset"):
        make_source({"kind": "reasoning_gym", "name": "no_such_dataset", "size": 3})


def _write_gsm8k(path, n=5):
    rows = [
        {"question": f"Q{i}: what is {i} * 1000?", "answer": f"{i} * 1000 = {i * 1000}\n#### {i * 1000:,}"}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_jsonl_gsm8k_golds(tmp_path):
    f = tmp_path / "train.jsonl"
    _write_gsm8k(f)
    src = make_source({"kind": "jsonl", "path": str(f)})
    assert len(src) == 5
    # "#### 3,000" -> "3000": the text after the last ####, thousands separators dropped
    assert src[3] == Problem(prompt_id="train/3", problem="Q3: what is 3 * 1000?", gold="3000", task="math")
    assert gsm8k_gold("x #### 1,234,567") == "1234567"
    assert gsm8k_gold("#### -7.5") == "-7.5"


def test_jsonl_plain_answers_and_fields(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"id": "a", "problem": "1+1", "answer": 2}\n\n{"id": "b", "problem": "2+2", "answer": "4"}\n'
    )
    src = make_source(JsonlSourceConfig(path=str(f), id_field="id", name="toy", task="arith"))
    assert [src[0], src[1]] == [Problem("toy/a", "1+1", "2", "arith"), Problem("toy/b", "2+2", "4", "arith")]


def test_positions_cycle_epochs_and_shuffle_is_per_epoch(tmp_path):
    f = tmp_path / "t.jsonl"
    _write_gsm8k(f, n=6)
    plain = make_source({"kind": "jsonl", "path": str(f)})
    assert [plain[i].prompt_id for i in (0, 5, 6, 13)] == ["t/0", "t/5", "t/0", "t/1"]
    shuf = make_source({"kind": "jsonl", "path": str(f), "shuffle": True, "shuffle_seed": 3})
    e0 = [shuf[i].prompt_id for i in range(6)]
    e1 = [shuf[i].prompt_id for i in range(6, 12)]
    assert sorted(e0) == sorted(e1) == [f"t/{i}" for i in range(6)]  # each epoch is a permutation
    assert e0 != e1  # with a different order (for this seed)
    again = make_source({"kind": "jsonl", "path": str(f), "shuffle": True, "shuffle_seed": 3})
    assert [again[i].prompt_id for i in range(12, 0, -1)] == [shuf[i].prompt_id for i in range(12, 0, -1)]
    it = shuf.iter_from(4)
    assert [next(it)[0] for _ in range(3)] == [4, 5, 6]


def test_holdout_split_is_disjoint_and_stable(tmp_path):
    f = tmp_path / "t.jsonl"
    _write_gsm8k(f, n=10)
    cfg = parse_source_config({"kind": "jsonl", "path": str(f), "holdout": 3})
    train, ev = make_source(cfg), make_source(cfg, split="eval")
    assert (len(train), len(ev)) == (7, 3)
    train_ids = {p.prompt_id for p in train}
    eval_ids = {p.prompt_id for p in ev}
    assert not train_ids & eval_ids and len(train_ids | eval_ids) == 10
    assert eval_ids == {p.prompt_id for p in make_source(cfg, split="eval")}
    with pytest.raises(PromptSourceError, match="holdout"):
        make_source({"kind": "jsonl", "path": str(f)}, split="eval")


def test_file_errors_name_the_problem(tmp_path):
    with pytest.raises(PromptSourceError, match="not found"):
        make_source({"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(PromptSourceError, match=r"bad.jsonl:2: invalid JSON"):
        make_source({"kind": "jsonl", "path": str(bad)})
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "q", "answer": "1"}\n')
    with pytest.raises(PromptSourceError, match="none of the fields .*'question'"):
        make_source({"kind": "jsonl", "path": str(nofield)})
    with pytest.raises(PromptSourceError, match="no field 'question'"):
        make_source({"kind": "jsonl", "path": str(nofield), "problem_field": "question"})
    nohash = tmp_path / "nohash.jsonl"
    nohash.write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(PromptSourceError, match="row 0.*####"):
        make_source({"kind": "jsonl", "path": str(nohash), "answer_format": "gsm8k"})[0]


def test_unknown_kind_rejected_by_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="kind"):
        parse_source_config({"kind": "csv", "path": "x"})


def test_optional_backends_fail_clearly(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(PromptSourceError, match="pyarrow"):
            make_source({"kind": "parquet", "path": str(tmp_path / "x.parquet")})
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(PromptSourceError, match="datasets"):
            make_source({"kind": "hf", "dataset": "openai/gsm8k", "subset": "main"})


def test_a_lone_surrogate_in_a_row_is_an_error_naming_file_and_row(tmp_path):
    """Issue 13 fault 6: "\\ud800" is valid JSON but no tokenizer can encode it."""
    from winnow.prompts import PromptSourceError, make_source, parse_source_config

    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "What is \\ud800 + 1?", "answer": "2"}\n')
    source = make_source(parse_source_config({"kind": "jsonl", "path": str(path)}))
    assert source.get(0).problem == "What is 1 + 1?"
    with pytest.raises(PromptSourceError, match=r"rows.jsonl: row 1, problem: invalid Unicode '\\ud800'"):
        source.get(1)
