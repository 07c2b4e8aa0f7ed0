"""Datasets as users have them: verl / TRL / GSM8K / MATH rows, dotted fields, chat prompts, per-row
tasks, numeric golds, and errors (not reprs) for golds that are not a string or a number."""

from __future__ import annotations

import json

import pytest

from winnow.datasets import DatasetError, get_path, gold_text, prompt_of, row_problem
from winnow.prompts import PromptSourceError, make_source

GSM8K = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                     "clips in May. How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
                   "clips altogether in April and May.\n#### 72"}
MATH = {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = "
                    "\\boxed{\\frac{3}{4}}$. (Not \\boxed{1}, that was a draft.) Final: $\\boxed{\\frac{3}{4}}$."}
VERL = {"data_source": "openai/gsm8k",
        "prompt": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "What is 40 + 2? Let's think step by step and output the "
                                               "final answer after \"####\"."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "42"},
        "extra_info": {"split": "train", "index": 0}}
TRL = {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "solution": "42"}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dotted_paths():
    assert get_path(VERL, "reward_model.ground_truth") == "42"
    assert get_path(VERL, "prompt.1.role") == "user"
    assert get_path({"a.b": 1, "a": {"b": 2}}, "a.b") == 1  # a literal dotted key wins
    with pytest.raises(KeyError, match="ground"):
        get_path({"reward_model": {}}, "reward_model.ground")


@pytest.mark.parametrize(
    "value, fmt, gold",
    [
        ("... #### 1,234", "auto", "1234"),  # GSM8K: after ####, thousands commas dropped
        (GSM8K["answer"], "gsm8k", "72"),
        (MATH["solution"], "auto", "\\frac{3}{4}"),  # the LAST \boxed{}, nested braces balanced
        ("\\boxed{\\{1, 2\\}}", "boxed", "\\{1, 2\\}"),
        ("  7/3 ", "plain", "7/3"),
        (42, "auto", "42"),
        (42.0, "auto", "42"),  # an integral float from a parquet column is "42", not "42.0"
        (0.5, "auto", "0.5"),
        (-3, "plain", "-3"),
    ],
)
def test_gold_text(value, fmt, gold):
    assert gold_text(value, fmt) == gold


@pytest.mark.parametrize(
    "value, msg",
    [
        ({"style": "rule", "ground_truth": "42"}, "mapping with keys \\['style', 'ground_truth'\\].*reward_model.ground_truth"),
        (["4", "2"], "a list of 2 items"),
        (True, "a bool"),
        (None, "a NoneType"),
        (float("nan"), "finite"),
        ("  ", "empty"),
        ("no hashes", "needs '####'"),
    ],
)
def test_bad_golds_are_errors_not_reprs(value, msg):
    fmt = "gsm8k" if value == "no hashes" else "auto"
    with pytest.raises(ValueError, match=msg) as e:
        gold_text(value, fmt)
    assert "{'style'" not in str(e.value)  # never the repr


def test_prompt_of_chat_lists():
    text, messages = prompt_of(VERL["prompt"])
    assert text.startswith("What is 40 + 2?")
    assert messages == (("system", "Be brief."), ("user", text))
    assert prompt_of("plain") == ("plain", None)
    with pytest.raises(ValueError, match="message 0 is a str"):
        prompt_of(["hello"])
    with pytest.raises(ValueError, match="needs a user message"):
        prompt_of([{"role": "system", "content": "x"}])


def test_row_problem_names_row_and_field():
    rp = row_problem(VERL, problem_field="prompt", answer_field="reward_model.ground_truth", task_field="data_source",
                     where="train.parquet", index=0)
    assert (rp.gold, rp.task, rp.messages[0]) == ("42", "openai/gsm8k", ("system", "Be brief."))
    with pytest.raises(DatasetError, match=r"train.parquet: row 3, field 'reward_model': the gold must be a string "
                                           r"or a number, got a mapping"):
        row_problem(VERL, problem_field="prompt", answer_field="reward_model", where="train.parquet", index=3)
    with pytest.raises(DatasetError, match=r"row 5 has no field 'reward_model.answer'"):
        row_problem(VERL, problem_field="prompt", answer_field="reward_model.answer", index=5)


def test_gsm8k_and_math_jsonl_with_no_field_settings(tmp_path):
    g = make_source({"kind": "jsonl", "path": _jsonl(tmp_path / "gsm8k.jsonl", [GSM8K])})[0]
    assert (g.gold, g.problem, g.messages, g.task) == ("72", GSM8K["question"], None, "math")
    m = make_source({"kind": "jsonl", "path": _jsonl(tmp_path / "math.jsonl", [MATH])})[0]
    assert (m.gold, m.problem) == ("\\frac{3}{4}", MATH["problem"])


def test_verl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    other = {**VERL, "data_source": "countdown", "reward_model": {"style": "rule", "ground_truth": "7"}}
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([VERL, other]), path)
    src = make_source({"kind": "parquet", "path": str(path), "task_field": "data_source", "shuffle": False})
    a, b = src[0], src[1]
    assert (a.gold, a.task, a.prompt_id) == ("42", "openai/gsm8k", "train/0")
    assert a.messages[-1][0] == "user" and a.problem.startswith("What is 40 + 2?")
    assert (b.gold, b.task) == ("7", "countdown")  # per-row route
    # the mistake of the issue: the whole dict as the gold is an error naming row and field
    with pytest.raises(PromptSourceError, match="row 0, field 'reward_model': the gold must be a string"):
        make_source({"kind": "parquet", "path": str(path), "answer_field": "reward_model"})[0]


def test_trl_conversational_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "trl_ds"
    datasets.Dataset.from_list([TRL, {**TRL, "solution": "12"}]).save_to_disk(str(folder))
    src = make_source({"kind": "hf", "dataset": str(folder), "shuffle": False})
    assert (src[0].problem, src[0].gold, src[0].messages) == ("What is 6 * 7?", "42", (("user", "What is 6 * 7?"),))
    assert src[1].gold == "12" and src[0].prompt_id == "trl_ds/0"
    # and a local parquet file through datasets' parquet builder
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([MATH]), tmp_path / "math.parquet")
    m = make_source({"kind": "hf", "dataset": str(tmp_path / "math.parquet")})[0]
    assert m.gold == "\\frac{3}{4}"


def test_numeric_golds_and_bad_rows(tmp_path):
    rows = [{"prompt": "2+3?", "answer": 5}, {"prompt": "1/2?", "answer": 0.5}, {"prompt": "x", "answer": [1]}]
    src = make_source({"kind": "jsonl", "path": _jsonl(tmp_path / "n.jsonl", rows), "shuffle": False})
    assert [src[0].gold, src[1].gold] == ["5", "0.5"]
    with pytest.raises(PromptSourceError, match="n.jsonl: row 2, field 'answer': .*a list of 1 items"):
        src[2]


def test_chat_prompt_is_rendered_as_given_and_crosses_the_wire():
    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.kafka import PromptRequest, decode, encode
    from winnow.learner.tiny import build_tiny_tokenizer
    from winnow.v1 import messages_pb2

    tok = build_tiny_tokenizer()
    fmt = PromptFormatter(tok, ChatFormat())
    _, turns = prompt_of(VERL["prompt"])
    req = PromptRequest(prompt_id="train/0", request_id="r-0-0", problem=turns[-1][1], gold="42", task="math", n=2,
                        messages=[messages_pb2.ChatMessage(role=r, content=c) for r, c in turns])
    back = decode(PromptRequest, encode(req))
    text = fmt.text(back.problem, [(m.role, m.content) for m in back.messages])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + turns[-1][1]
                    + "<|im_end|>\n<|im_start|>assistant\n")  # no added system prompt, suffix or demos
    plain = fmt.text("What is 2+3?")  # a plain problem still gets the configured format
    assert ChatFormat().system_prompt in plain and ChatFormat().user_suffix in plain
    assert fmt(back.problem, []) == fmt(back.problem)  # no turns (an old learner): the plain path
