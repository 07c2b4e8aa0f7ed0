"""Prompt sources: deterministic positions, epochs, held-out split, GSM8K golds, clear errors."""

from __future__ import annotations

import json

import pytest

from winnow.datasets import gsm8k_answer
from winnow.prompts import (
    JsonlSourceConfig,
    Problem,
    PromptSourceError,
    ReasoningGymSourceConfig,
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
    src = make_source({"kind": "jsonl", "path": str(f), "shuffle": False})
    assert len(src) == 5
    # "#### 3,000" -> "3000": the text after the last ####, thousands separators dropped
    assert src[3] == Problem(prompt_id="train/3", problem="Q3: what is 3 * 1000?", gold="3000", task="math")
    assert gsm8k_answer("x #### 1,234,567") == "1234567"
    assert gsm8k_answer("#### -7.5") == "-7.5"


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
    plain = make_source({"kind": "jsonl", "path": str(f), "shuffle": False})  # the file's order, every epoch
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


# --------------------------------------------------------------------------- independent seeds (issue 24)

SUMS = {"kind": "reasoning_gym", "name": "basic_arithmetic", "size": 2000,
        "config": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+"],
                   "allow_parentheses": False, "allow_negation": False}}  # winnow up's default task


def _texts(src, start, stop):
    return {src[i].problem for i in range(start, stop)}


def test_two_seeds_first_1000_reasoning_gym_problems_overlap_no_more_than_chance():
    """Issue 24 item 1: reasoning-gym builds item i from Random(seed + i), so seed 1001's stream was seed 1000's
    shifted by one (943 of the first 1,000 problem texts shared). The seed is mixed first. Chance is what two
    independent draws of 1,000 share in this small space (2-digit sums): measured on one seed's rows 0-999
    against its rows 1000-1999 (independent items of one stream), about 95."""
    a, b = make_source({**SUMS, "seed": 1000}), make_source({**SUMS, "seed": 1001})
    chance = len(_texts(a, 0, 1000) & _texts(a, 1000, 2000))
    shared = len(_texts(a, 0, 1000) & _texts(b, 0, 1000))
    assert 50 < chance < 150
    assert shared <= chance + 4 * chance**0.5 + 5  # ~40 points above the chance level: 4 standard deviations
    # raw_seed reproduces the old streams (shifted by one) for runs made before seeds were mixed
    raw_a = make_source({**SUMS, "seed": 1000, "raw_seed": True})
    raw_b = make_source({**SUMS, "seed": 1001, "raw_seed": True})
    assert raw_a[1].problem == raw_b[0].problem and len(_texts(raw_a, 0, 1000) & _texts(raw_b, 0, 1000)) > 900


def test_mixed_seed_is_stable_and_fits_reasoning_gym():
    from winnow.prompts import mixed_seed

    assert mixed_seed(1000, "basic_arithmetic", 5000) == mixed_seed(1000, "basic_arithmetic", 5000)
    assert mixed_seed(1000, "basic_arithmetic", 5000) != mixed_seed(1000, "chain_sum", 5000)  # per task
    # seed + item index (+ a composite's part number) stays below 2^32 (numpy-seeded datasets need it)
    assert all(0 <= mixed_seed(s, "x", 10_000_000, spare=5) < 2**32 - 10_000_005 for s in range(-50, 50))


def test_file_sources_shuffle_by_default_and_two_seeds_overlap_no_more_than_chance(tmp_path):
    """Issue 24 item 1, files: a JSONL/Parquet source served its rows in file order for every seed. It shuffles by
    default with shuffle_seed; two seeds' first 1,000 of 10,000 distinct rows share about 1000 * 1000 / 10000 =
    100 (the hypergeometric mean; sd = sqrt(100 * 0.9 * 0.9 * 9000/9999) ~ 8.5). shuffle: false keeps file order."""
    f = tmp_path / "big.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(10_000)))
    a = make_source({"kind": "jsonl", "path": str(f), "shuffle_seed": 1000})
    b = make_source({"kind": "jsonl", "path": str(f), "shuffle_seed": 1001})
    shared = len(_texts(a, 0, 1000) & _texts(b, 0, 1000))
    assert 100 - 5 * 8.5 <= shared <= 100 + 5 * 8.5
    ordered = make_source({"kind": "jsonl", "path": str(f), "shuffle": False})
    assert [ordered[i].problem for i in range(3)] == ["q0", "q1", "q2"]


@pytest.mark.parametrize("seed", [0, 1, 1000, 1001, 424242])
def test_the_held_out_split_is_disjoint_from_training_for_every_seed(tmp_path, seed):
    f = tmp_path / "t.jsonl"
    _write_gsm8k(f, n=50)
    for cfg in ({**SUMS, "size": 50, "seed": seed, "holdout": 10, "shuffle_seed": seed},
                {"kind": "jsonl", "path": str(f), "holdout": 10, "shuffle_seed": seed}):
        train, ev = make_source(cfg), make_source(cfg, split="eval")
        train_rows = {train.row_of(i) for i in range(len(train))}
        eval_rows = {ev.row_of(i) for i in range(len(ev))}
        assert len(eval_rows) == 10 and not train_rows & eval_rows and len(train_rows | eval_rows) == 50
        # with one holdout_seed, every shuffle seed holds out the same rows and trains on the rest in its own order
        fixed = {**cfg, "holdout_seed": 7}
        assert {make_source(fixed, split="eval").row_of(i) for i in range(10)} == {
            make_source({**fixed, "shuffle_seed": seed + 1}, split="eval").row_of(i) for i in range(10)}
