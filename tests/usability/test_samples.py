"""The sample log: rows per group with kept/dropped and why, bounded by config; winnow samples prints it."""

from __future__ import annotations

import json

import pytest

from winnow.cli import main
from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import group_from_proto
from winnow.learner.objective import judge_samples
from winnow.learner.tracking import SamplesConfig
from winnow.samples import SampleLog, read_samples, select


def _rows(path):
    return list(read_samples(path))


def _judge(groups, preset):
    return judge_samples([group_from_proto(g, len(g.samples)) for g in groups], AlgoConfig(preset=preset))


def test_raft_keeps_correct_samples_only(tmp_path, make_group):
    log = SampleLog(tmp_path / "samples.jsonl", SamplesConfig())
    groups = [make_group([1, 2, 7, 1]), make_group([2, 2, 2, 2], prompt_id="p/1")]
    log.record(groups, ["trained", "all_wrong"], step=5, judged=_judge(groups, "raft"))
    written = log.flush(5)
    (a, b) = _rows(tmp_path / "samples.jsonl")
    assert written == [a, b]
    assert a["step"] == 5 and a["problem"] == "What is 2+3?" and a["gold"] == "5" and a["outcome"] == "trained"
    assert [s["status"] for s in a["samples"]] == ["correct", "wrong", "error", "correct"]
    assert [s["kept"] for s in a["samples"]] == [True, False, False, True]
    assert [s["why"] for s in a["samples"]] == ["", "not correct (raft)", "verifier error (invalid)", ""]
    assert [s["extracted"] for s in a["samples"]] == ["5", "4", "", "5"]
    assert [s["finish_reason"] for s in a["samples"]][:2] == ["stop", "length"]
    # rewards are the learner's (raft: correct 1, wrong 0), not the generator's field
    assert [s["reward"] for s in a["samples"]] == [1.0, 0.0, 0.0, 1.0]
    assert [s["why"] for s in b["samples"]] == ["group all_wrong"] * 4


def test_reinforce_rej_keeps_mixed_groups_and_stale(tmp_path, make_group):
    log = SampleLog(tmp_path / "s.jsonl", SamplesConfig())
    log.record([make_group([1, 2])], ["stale"], step=3)  # dropped before the step
    groups = [make_group([1, 2]), make_group([1, 1])]
    log.record(groups, ["trained", "all_correct"], step=3, judged=_judge(groups, "reinforce_rej"))
    log.flush(3)
    rows = _rows(tmp_path / "s.jsonl")
    assert [r["outcome"] for r in rows] == ["trained", "all_correct", "stale"]  # the batch first
    assert [s["kept"] for s in rows[0]["samples"]] == [True, True]
    assert [s["why"] for s in rows[1]["samples"]] == ["group all_correct"] * 2
    assert [s["why"] for s in rows[2]["samples"]] == ["stale", "stale"]


def test_bounds(tmp_path, make_group):
    cfg = SamplesConfig(every=2, max_groups=2, max_chars=5, max_mb=0.0005)  # ~524 bytes
    log = SampleLog(tmp_path / "s.jsonl", cfg)
    groups = [make_group([1, 2], prompt_id=f"p/{i}", texts=["0123456789", "ab"]) for i in range(3)]
    log.record(groups, ["trained"] * 3, step=1)  # step 1: not a multiple of every=2
    assert log.flush(1) == []
    log.record(groups, ["trained"] * 3, step=2)
    rows = log.flush(2)
    assert [r["prompt_id"] for r in rows] == ["p/0", "p/1"]  # max_groups
    assert rows[0]["samples"][0]["text"] == "01234… [5 more chars]"
    assert (tmp_path / "s.jsonl").stat().st_size > 524
    log.record(groups, ["trained"] * 3, step=4)
    assert log.flush(4) == []  # the file reached max_mb: nothing more
    assert len(_rows(tmp_path / "s.jsonl")) == 2


def test_winnow_samples_prints_and_filters(tmp_path, make_group, capsys):
    log = SampleLog(tmp_path / "samples.jsonl", SamplesConfig())
    g = [make_group([1, 2], texts=["2+3=5 \\boxed{5}", "I think \\boxed{4}"])]
    log.record(g, ["trained"], step=1, judged=_judge(g, "raft"))
    log.flush(1)
    g = [make_group([2, 2], prompt_id="p/9")]
    log.record(g, ["all_wrong"], step=2, judged=_judge(g, "raft"))
    log.flush(2)

    assert main(["samples", str(tmp_path), "--step", "1", "--status", "wrong"]) == 0
    out = capsys.readouterr().out
    assert "step 1" in out and "gold: 5" in out and "What is 2+3?" in out
    assert "I think \\boxed{4}" in out and "dropped: not correct (raft)" in out
    assert "2+3=5" not in out  # the correct sample is filtered out by --status wrong

    assert main(["samples", str(tmp_path), "--outcome", "all_wrong", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["prompt_id"] == "p/9"

    assert main(["samples", str(tmp_path), "--step", "7"]) == 1
    assert "no matching samples" in capsys.readouterr().err
    assert main(["samples", str(tmp_path / "nowhere")]) == 2


def test_select_keeps_only_matching_samples():
    rows = [{"step": 1, "prompt_id": "a", "outcome": "trained",
             "samples": [{"status": "correct"}, {"status": "wrong"}]}]
    (r,) = select(iter(rows), status="wrong")
    assert r["samples"] == [{"status": "wrong"}]
    assert list(select(iter(rows), status="timeout")) == []


@pytest.mark.parametrize("torn", ['{"step": 1', ""])
def test_read_skips_torn_last_line(tmp_path, torn):
    p = tmp_path / "s.jsonl"
    p.write_text('{"step": 0, "samples": []}\n' + torn)
    assert [r["step"] for r in read_samples(p)] == [0]


HOSTILE = ("ok\x1b[2J\x1b]0;pwned\x07 \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \x9b31m c1 \x7f del \r over "
           "\u202e bidi \x00 nul\tkeeps tab\nand newline")


def test_winnow_samples_escapes_terminal_control_sequences(tmp_path, make_group, capsys):
    # issue 22 item 12: a group's text reached the operator's terminal raw (clear screen, set the title,
    # hyperlinks, C1 CSI, carriage-return overwrite, bidi override)
    log = SampleLog(tmp_path / "samples.jsonl", SamplesConfig())
    group = make_group([1, 2], problem="What is \x1b[31m2+3?", gold="5\x1b[0m", texts=[HOSTILE, "fine"])
    group.samples[0].extracted = "5\x1b[1A"
    log.record([group], ["trained"], step=1)
    log.flush(1)
    assert main(["samples", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    unsafe = [c for c in out if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"]
    assert unsafe == []
    assert r"ok\x1b[2J\x1b]0;pwned\x07" in out and r"\x9b31m" in out and r"\r over" in out and r"\u202e" in out
    assert r"What is \x1b[31m2+3?" in out and r"gold: 5\x1b[0m" in out
    assert "keeps tab\n" in out.replace("      and newline", "and newline")  # tab and newline stay readable
    assert main(["samples", str(tmp_path), "--json"]) == 0
    line = capsys.readouterr().out
    assert not [c for c in line if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"]
    assert json.loads(line)["samples"][0]["text"] == HOSTILE  # the JSON still holds the exact text


def test_a_cut_off_response_is_shown_as_truncated_not_wrong():
    from winnow.samples import format_row

    cut = {"status": "wrong", "finish_reason": "length", "text": "Let me think step by", "tokens": 24}
    done = {"status": "wrong", "finish_reason": "stop", "text": "41", "tokens": 3}
    right = {"status": "correct", "finish_reason": "length", "text": "42", "tokens": 24}
    text = format_row({"step": 1, "prompt_id": "a", "samples": [cut, done, right]})
    assert "[0] truncated " in text and "[1] wrong " in text and "[2] correct " in text
    rows = [{"step": 1, "prompt_id": "a", "samples": [cut, done, right]}]
    assert [s["text"] for s in next(select(iter(rows), status="truncated"))["samples"]] == ["Let me think step by"]
