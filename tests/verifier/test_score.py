"""`winnow score`: streaming JSONL grading in-process and through a server, malformed lines in place,
order kept, exit codes; and the CLI's --help staying light."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from winnow.verifier.score import Summary, parse_line, score_lines

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "math_answers.jsonl"


def test_parse_line_errors_name_the_line_and_field():
    cases = {
        '{"response": "x", "gold": "1"': "line 3: invalid JSON",
        '["response", "gold"]': "line 3: expected a JSON object, got list",
        '{"response": "x"}': "line 3: missing field 'gold'",
        '{"gold": "1"}': "line 3: missing field 'response'",
        '{"response": 5, "gold": "1"}': "line 3: field 'response' must be a string, got int",
        '{"response": "x", "gold": null}': "line 3: field 'gold' must be a string or number, got NoneType",
        '{"response": "x", "gold": true}': "line 3: field 'gold' must be a string or number, got bool",
        '{"response": "x", "gold": "1", "task": 1}': "line 3: field 'task' must be a string, got int",
        '{"response": "x", "gold": "1", "options": []}': "line 3: field 'options' must be an object, got list",
        '{"response": "x", "gold": "1", "options": {"a": [1]}}': "line 3: field 'options.a' must be a string",
    }
    for text, message in cases.items():
        p = parse_line(3, text)
        assert p.item is None and p.error.startswith(message), (text, p.error)
    ok = parse_line(4, '{"response": "r", "gold": 12, "options": {"percent": true, "timeout_ms": 500}}')
    assert ok.error == "" and ok.item.id == "4" and ok.item.gold == "12"
    assert ok.item.options == {"percent": "true", "timeout_ms": "500"}


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def mixed_file(path: Path) -> list[str]:
    """Eight physical lines: 5 good, 1 blank (skipped), 2 malformed at lines 3 and 6."""
    lines = [
        json.dumps({"id": "a", "response": r"\boxed{4}", "gold": "4", "extra": [1, 2]}),
        json.dumps({"id": "a", "response": r"\boxed{5}", "gold": "4"}),  # duplicate id: fine
        '{"id": "c", "response": "oops"',  # line 3: bad JSON
        json.dumps({"response": "no box here", "gold": "4"}),  # no id: fine
        "",  # blank line: skipped
        json.dumps({"id": "f", "response": r"\boxed{1}"}),  # line 6: missing gold
        json.dumps({"id": "g", "response": r"\boxed{\frac{1}{2}}", "gold": 0.5}),
        json.dumps({"id": "h", "response": r"\boxed{7}", "gold": "#### 7", "task": "gsm8k"}),
    ]
    write_lines(path, lines)
    return lines


def check_mixed_output(out: list[dict]) -> None:
    assert len(out) == 7  # 8 lines minus the blank one
    assert [r.get("id") for r in out] == ["a", "a", None, None, "f", "g", "h"]
    assert [r["status"] for r in out] == ["correct", "wrong", "error", "no_answer", "error", "correct", "correct"]
    assert [r["correct"] for r in out] == [True, False, False, False, False, True, True]
    assert out[0]["extra"] == [1, 2] and out[0]["extracted"] == "4"
    assert out[2] == {"line": 3, "status": "error", "correct": False, "error": out[2]["error"]}
    assert out[2]["error"].startswith("line 3: invalid JSON")
    assert out[4] == {"line": 6, "id": "f", "status": "error", "correct": False, "error": "line 6: missing field 'gold'"}
    for r in (out[0], out[1], out[3], out[5], out[6]):
        assert set(r) >= {"status", "correct", "extracted", "path", "detail", "latency_ms"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WINNOW_VERIFIER_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "winnow", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_score_cli_in_process_with_malformed_lines(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    mixed_file(src)
    res = run_cli("score", str(src), "-o", str(dst), "--workers", "1", "--batch-size", "2")
    assert res.returncode == 1, res.stderr
    check_mixed_output([json.loads(line) for line in dst.read_text().splitlines()])
    assert "7 lines" in res.stderr and "correct 3, wrong 1, no_answer 1" in res.stderr
    assert "2 malformed lines (first: line 3: invalid JSON" in res.stderr


async def test_score_cli_via_verifier_with_token(tmp_path, start_server):
    srv = await start_server(token="tok", max_batch_items=2)
    src = tmp_path / "in.jsonl"
    mixed_file(src)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "winnow", "score", str(src), "--verifier", srv.target, "--token", "tok",
        "--batch-size", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1, err.decode()
    check_mixed_output([json.loads(line) for line in out.decode().splitlines()])  # stdout when no -o
    # batch size 3 over 6 non-blank lines of which 4 scorable, server chunks of <= 2 items
    assert srv.metrics.requests.labels("VerifyBatch", "OK")._value.get() >= 2
    assert srv.metrics.requests.labels("VerifyBatch", "INVALID_ARGUMENT")._value.get() == 0


async def test_score_cli_verifier_unreachable_exits_3(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = tmp_path / "in.jsonl"
    write_lines(src, [json.dumps({"response": r"\boxed{1}", "gold": "1"})])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "winnow", "score", str(src), "--verifier", f"127.0.0.1:{port}", "--retry-s", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert "unavailable" in err.decode()


async def test_score_cli_refused_call_exits_3_from_stdin(start_server):
    srv = await start_server(token="right")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "winnow", "score", "-", "--verifier", srv.target, "--token", "wrong",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    line = json.dumps({"id": "a", "response": r"\boxed{1}", "gold": "1"}) + "\n"
    out, err = await asyncio.wait_for(proc.communicate(line.encode()), 60)
    assert proc.returncode == 3, err.decode()
    assert "UNAUTHENTICATED" in err.decode() and "Traceback" not in err.decode()
    assert out == b""


async def test_score_lines_streams_in_order_with_bounded_inflight(engine):
    """Many small chunks through the real engine: order kept, never more than 2 chunks outstanding."""
    n = 500
    lines = [json.dumps({"id": i, "response": rf"\boxed{{{i % 3}}}", "gold": str(i % 2)}) for i in range(n)]
    outstanding = 0
    peak = 0

    async def scorer(items):
        nonlocal outstanding, peak
        outstanding += 1
        peak = max(peak, outstanding)
        try:
            return await asyncio.to_thread(engine.verify_batch, items)
        finally:
            outstanding -= 1

    out = io.StringIO()
    summary = await score_lines(iter(lines), out, scorer, batch_size=16, inflight=2)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in rows] == list(range(n))
    # i%3 == i%2 exactly when i % 6 in {0, 1}
    assert [r["correct"] for r in rows] == [i % 6 in (0, 1) for i in range(n)]
    assert peak <= 3  # the chunk being read + at most 2 in flight
    assert summary.lines == n and not summary.failed
    assert summary.counts["correct"] == sum(1 for i in range(n) if i % 6 in (0, 1))


def test_summary_format():
    s = Summary(lines=10, elapsed_s=2.0, malformed=1, first_malformed="line 2: missing field 'gold'")
    s.counts.update({"correct": 6, "wrong": 3})
    assert s.format() == (
        "winnow score: 10 lines in 2.00s (5.0 lines/s): correct 6, wrong 3; "
        "1 malformed line (first: line 2: missing field 'gold')"
    )
    assert s.failed


@pytest.mark.slow
def test_example_file_scores_as_annotated(tmp_path):
    dst = tmp_path / "out.jsonl"
    res = run_cli("score", str(EXAMPLE), "-o", str(dst), "--workers", "1")
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(rows) == len(EXAMPLE.read_text().splitlines()) >= 25
    wrong = [(r["id"], r["expect"], r["status"], r.get("extracted")) for r in rows if r["status"] != r["expect"]]
    assert not wrong
    assert res.returncode == 0, res.stderr
    assert {r["expect"] for r in rows} >= {"correct", "wrong", "no_answer"}


def test_help_is_fast_and_imports_no_heavy_modules():
    code = "import sys, winnow.verifier.main; print(sorted(m for m in ('sympy', 'grpc') if m in sys.modules))"
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert mine.stdout.strip() == "[]", mine.stdout + mine.stderr
    for args in (["--help"], ["score", "--help"], ["verifier", "serve", "--help"]):
        t = time.perf_counter()
        res = run_cli(*args, timeout=60)
        assert res.returncode == 0, res.stderr
        assert time.perf_counter() - t < 20
    assert "--verifier HOST:PORT" in run_cli("score", "--help").stdout
    assert "--metrics-port" in run_cli("verifier", "serve", "--help").stdout


def test_parse_line_hostile_lines_are_error_records():
    """Issue 13 fault 5: each of these used to raise out of `winnow score` and lose the scored lines."""
    cases = {
        b'{"response": "\xff\xfe", "gold": "1"}': "line 2: invalid UTF-8 at byte 14",
        '{"response": "x", "gold": ' + "9" * 5000 + "}": "line 2: invalid JSON: Exceeds the limit",
        "[" * 200_000 + "]" * 200_000: "line 2: invalid JSON: nested too deep",
        '{"response": "\\ud800", "gold": "1"}': "line 2: lone surrogate",
    }
    for text, message in cases.items():
        p = parse_line(2, text)
        assert p.item is None and p.error.startswith(message), (str(text)[:60], p.error)
    # NaN / Infinity are read as strings, so the record (copied to the output) stays valid JSON
    nan = parse_line(5, '{"response": "\\\\boxed{1}", "gold": NaN, "extra": Infinity}')
    assert nan.item.gold == "nan" and nan.record["extra"] == "\\infty"
    json.dumps(nan.record, allow_nan=False)


def _scored(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_score_cli_refuses_an_output_that_is_the_input(tmp_path, link):
    """Issue 13 fault 4: `-o` a symlink or hard link to the input used to truncate the input to 0 bytes."""
    src = tmp_path / "in.jsonl"
    mixed_file(src)
    before = src.read_bytes()
    out = tmp_path / "out.jsonl"
    (os.symlink if link == "symlink" else os.link)(src, out)
    res = run_cli("score", str(src), "-o", str(out))
    assert res.returncode == 2 and "is the input file itself" in res.stderr, res.stderr
    assert src.read_bytes() == before


@pytest.mark.slow
def test_score_cli_hostile_lines_dev_full_and_atomic_output(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = json.dumps({"id": "g", "response": r"\boxed{4}", "gold": "4"}).encode()
    lines = [good, b'{"response": "\xff", "gold": "1"}', b'{"response": "x", "gold": ' + b"9" * 5000 + b"}",
             b"[" * 200_000 + b"]" * 200_000, b'{"response": "\\ud800", "gold": "1"}',
             b'{"response": "\\\\boxed{1}", "gold": NaN}', b'{"response": "\\\\boxed{1}", "gold": "1/0"}', good]
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = run_cli("score", str(src), "-o", str(dst), "--workers", "1")
    assert res.returncode == 1, res.stderr  # some lines malformed, the others scored
    out = _scored(dst)
    assert [r["status"] for r in out] == ["correct", "error", "error", "error", "error", "error", "error", "correct"]
    assert "unanswerable" in out[5]["detail"] and "unanswerable" in out[6]["detail"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".winnow-score-")]  # temp file renamed
    if os.path.exists("/dev/full"):
        res = run_cli("score", str(src), "-o", "/dev/full", "--workers", "1")
        assert res.returncode == 4 and "aborted: cannot write /dev/full" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_output_sink_replaces_a_symlinks_target_and_keeps_the_mode(tmp_path):
    from winnow.verifier.score import _Sink

    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    sink = _Sink(str(link))
    sink.file.write("new\n")
    sink.finish()
    assert link.is_symlink() and target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640
    aborted = _Sink(str(link))
    aborted.file.write("partial\n")
    aborted.abort()  # a failed run leaves the previous output and no temporary file
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def _mixed_items() -> list[dict]:
    """Every kind of line the fast paths and the symbolic path decide, with options, once each."""
    rows = [
        {"response": r"So \boxed{42}.", "gold": "42"},
        {"response": r"So \boxed{43}.", "gold": "42"},
        {"response": r"\boxed{-0}", "gold": "0"},
        {"response": r"\boxed{007}", "gold": "7"},
        {"response": r"\boxed{5000}", "gold": "50", "options": {"percent": True}},
        {"response": r"\boxed{1,000}", "gold": 1000},
        {"response": "The answer is 12.", "gold": "#### 12", "task": "gsm8k"},
        {"response": "I got 12 apples", "gold": "12", "options": {"fallback": "0"}},
        {"response": r"\boxed{3} or \boxed{4}", "gold": "4"},
        {"response": r"\boxed{\frac{6}{8}}", "gold": r"\frac{3}{4}"},
        {"response": r"\boxed{0.33}", "gold": r"\frac{1}{3}", "options": {"rounded": 1}},
        {"response": r"\boxed{0.33}", "gold": r"\frac{1}{3}"},
        {"response": r"$\boxed{(x+1)^2}$", "gold": "x^2+2x+1"},
        {"response": r"\boxed{(1+i)^2}", "gold": "2i"},
        {"response": r"\boxed{(1+i)^2}", "gold": "2i", "options": {"imaginary": "none"}},
        {"response": r"\boxed{e^{13x}}", "gold": r"e^{6x} \cdot e^{7x}"},
        {"response": r"\boxed{\frac{5\sqrt{3}}{3}}", "gold": r"\frac{5}{\sqrt{3}}"},
        {"response": r"\boxed{[1, 5)}", "gold": "[1,5)"},
        {"response": r"\boxed{x > 3}", "gold": r"(3, \infty)"},
        {"response": r"\boxed{B}", "gold": "(B)"},
        {"response": r"\boxed{\text{Monday}}", "gold": "monday"},
        {"response": "no answer at all", "gold": "5", "options": {"fallback": False}},
        {"response": "<think>\\boxed{5}", "gold": "5"},
        {"response": "\\boxed{\u00e9t\u00e9 \u2211}", "gold": "5"},  # non-ASCII: written as is
        {"response": "\\boxed{\\underline{5}}", "gold": "5"},  # a \u in the JSON text: the re-encode check runs
        {"response": r"\boxed{1}", "gold": float("nan")},  # NaN -> "nan": an unanswerable gold, status error
    ]
    return rows


def test_score_cli_output_equals_the_engine_verdicts(tmp_path):
    """Issue 29 item 3: the faster CLI (lazy pool, batching, fast JSON) writes, line for line, the verdict
    that the pure in-process path (``grade``: no pool, no cache, no batching) gives for the same item."""
    from winnow.verifier.config import VerifierConfig
    from winnow.verifier.engine import grade

    rows = _mixed_items()
    lines = [json.dumps({"id": i, **r}) for i, r in enumerate(rows)]
    lines[3:3] = ["", '{"id": "broken", "response": ']  # a blank line and a malformed one, mid-chunk
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, lines)
    res = run_cli("score", str(src), "-o", str(dst), "--workers", "1", "--batch-size", "4", "--no-progress")
    assert res.returncode == 1, res.stderr  # the malformed line and the NaN gold
    out = _scored(dst)
    assert len(out) == len(rows) + 1
    assert out[3] == {"line": 5, "status": "error", "correct": False, "error": out[3]["error"]}
    del out[3]
    defaults = VerifierConfig().default_options
    for row, rec in zip(rows, out, strict=True):
        options = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in row.get("options", {}).items()}
        want = grade(row["response"], str(row["gold"]), row.get("task", ""), {**defaults, **options})
        got = (rec["status"], rec["extracted"], rec["path"], rec["detail"])
        assert got == (want.status.label, want.extracted, want.path, want.detail), row
        assert rec["correct"] == (want.status.label == "correct") and rec["response"] == row["response"]
    assert {r["path"] for r in out} >= {"number", "string", "symbolic", "hedge", "mcq", "text", "extract"}


def test_score_of_an_integer_file_never_loads_sympy(tmp_path):
    """The worker pool (and sympy) start only when an item needs the symbolic path."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [json.dumps({"response": rf"\boxed{{{n}}}", "gold": str(n + n % 2)}) for n in range(50)])
    code = (f"import sys; from winnow.cli import main; rc = main(['score', {str(src)!r}, '-o', {str(dst)!r}, "
            "'--no-progress']); print(rc, sorted(m for m in ('sympy', 'latex2sympy2_extended') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split("\n")[0] == "0 []", res.stdout + res.stderr
    assert [r["correct"] for r in _scored(dst)] == [n % 2 == 0 for n in range(50)]


def test_score_settings_without_pydantic_are_the_configs_defaults(monkeypatch):
    """``winnow score`` skips pydantic when nothing configures it; what it uses then is ``VerifierConfig()``."""
    import argparse

    from winnow.config import ConfigError, load_config
    from winnow.verifier.config import VerifierConfig
    from winnow.verifier.score import EngineSettings, engine_settings

    for key in [k for k in os.environ if k.startswith("WINNOW_")]:
        monkeypatch.delenv(key)
    assert EngineSettings.defaults() == EngineSettings.of(load_config(VerifierConfig))
    for workers in (1, 3, 256):  # the --workers the shortcut applies: the config's own bounds (1..256 and 0)
        args = argparse.Namespace(config=None, set=[], workers=workers)
        assert engine_settings(args) == EngineSettings.of(load_config(VerifierConfig, overrides={"workers": workers}))
    for workers in (-1, 257):  # out of bounds: validated by the config, as before
        with pytest.raises(ConfigError, match="workers"):
            engine_settings(argparse.Namespace(config=None, set=[], workers=workers))
    monkeypatch.setenv("WINNOW_VERIFIER_TIMEOUT_S", "7")  # any WINNOW_* variable: resolved by the config
    assert engine_settings(argparse.Namespace(config=None, set=[], workers=None)).timeout_s == 7.0
    assert engine_settings(argparse.Namespace(config=None, set=["cache_size=3"], workers=None)).cache_size == 3
