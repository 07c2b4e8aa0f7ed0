"""Python reward functions served by a real ``winnow verifier serve`` process on 127.0.0.1 (issue 27 item 1).

The functions (a module written here, and the examples under examples/reward_functions/) are named in the
verifier's config, run in its sandboxed worker pool, and their weighted score comes back over the same gRPC
contract as every verdict, next to the status. Failures are statuses without a score, never a zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from winnow.v1 import verifier_pb2 as pb
from winnow.v1 import verifier_pb2_grpc as pb_grpc
from winnow.verdict import Item, Status

from .conftest import PYTHON, ROOT, free_port, stop_process

REWARDS = textwrap.dedent('''
    import math, os, time

    def has_think(completion, **kwargs):            # a TRL-style format reward
        return 1.0 if "<think>" in completion and "</think>" in completion else 0.0

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):   # verl's signature
        return {"score": 1.0 if solution_str.strip().endswith(ground_truth) else 0.0,
                "extracted": solution_str.split()[-1], "status": "correct" if solution_str.strip().endswith(ground_truth) else "wrong"}

    def length_penalty(completions, **kwargs):      # TRL batched: lists in, a list out
        return [-len(c) / 100 for c in completions]

    def needs_prompt(prompt, completion, task, extra_info):
        return float(len(prompt)) + float(extra_info.get("bonus", 0))

    def crash(completion):
        raise RuntimeError("bug in my reward")

    def slow(completion):
        time.sleep(60)
        return 1.0

    def hog(completion):
        blob = bytearray(4 << 30)                    # far past the 512 MiB limit
        return float(len(blob))

    def hard_exit(completion):
        os._exit(3)

    def not_a_number(completion):
        return math.nan

    def words(completion):
        return "great"
''')


def make_config(tmp_path: Path, routes: list[dict]) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    cfg = {"verifier": {"workers": 1, "reward_functions": {"timeout_s": 3, "memory_mb": 512, "workers": 2,
                                                            "routes": routes}}}
    path = tmp_path / "verifier.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mine(name: str, weight: float = 1.0, **kw) -> dict:
    return {"function": f"my_rewards.py:{name}", "weight": weight, **kw}


ROUTES = [
    {"tasks": ["fmt"], "functions": [mine("has_think", 0.25), mine("compute_score", 1.0)]},
    {"tasks": ["trl"], "functions": [mine("length_penalty", 2.0, batched=True)], "pass_score": -1.0},
    {"tasks": ["prompt"], "functions": [mine("needs_prompt")]},
    {"tasks": ["crash"], "functions": [mine("has_think"), mine("crash")]},
    {"tasks": ["slow"], "functions": [mine("slow")]},
    {"tasks": ["hog"], "functions": [mine("hog")]},
    {"tasks": ["exit"], "functions": [mine("hard_exit")]},
    {"tasks": ["nan"], "functions": [mine("not_a_number")]},
    {"tasks": ["words"], "functions": [mine("words")]},
    {"tasks": ["gsm8k_strict"], "functions": [
        {"function": str(ROOT / "examples/reward_functions/gsm8k.py") + ":strict_format", "weight": 0.5},
        {"function": str(ROOT / "examples/reward_functions/gsm8k.py") + ":correctness", "weight": 1.0}],
     "pass_score": 1.5},
    {"tasks": ["code/*"], "functions": [{"function": str(ROOT / "examples/reward_functions/code.py") + ":pass_fraction"}]},
]


def start_verifier(config: Path, cwd: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "winnow", "verifier", "serve", "--config", str(config), "--port", str(port),
                             "--metrics-port", "-1"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    import time

    deadline = time.monotonic() + 90
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"verifier exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(service="winnow.v1.Verifier"),
                                timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, port
            except grpc.RpcError:
                time.sleep(0.2)
    stop_process(proc)
    raise TimeoutError("verifier did not become SERVING")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("rewards")
    proc, port = start_verifier(make_config(tmp, ROUTES), cwd=tmp)
    try:
        yield port
    finally:
        stop_process(proc)
        assert proc.returncode == 0, proc.stdout.read()


@pytest.fixture(scope="module")
def stub(server: int) -> Iterator[pb_grpc.VerifierStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        yield pb_grpc.VerifierStub(channel)


def verify(stub, task: str, response: str, gold: str = "", prompt: str = "", **options) -> pb.VerifyResult:
    return stub.Verify(pb.VerifyRequest(id="x", response=response, gold=gold, task=task, prompt=prompt,
                                        options=options), timeout=30)


def test_weighted_functions_score_next_to_the_status(stub) -> None:
    r = verify(stub, "fmt", "<think>6*7</think> so 42", gold="42")
    # 0.25 * has_think (1) + 1.0 * compute_score (1) = 1.25; compute_score's own status wins
    assert (r.status, r.HasField("score"), r.score, r.path) == (pb.STATUS_CORRECT, True, 1.25, "reward_fn")
    assert r.extracted == "42"
    r = verify(stub, "fmt", "no thinking: 41", gold="42")
    assert (r.status, r.score) == (pb.STATUS_WRONG, 0.0)  # 0.25 * 0 + 1.0 * 0


def test_trl_batched_function_and_pass_score(stub) -> None:
    r = verify(stub, "trl", "x" * 30)
    assert r.score == pytest.approx(-0.6)  # 2.0 * (-30 / 100)
    assert r.status == pb.STATUS_CORRECT  # no function status: -0.6 >= pass_score -1.0
    r = verify(stub, "trl", "x" * 80)
    assert r.score == pytest.approx(-1.6) and r.status == pb.STATUS_WRONG  # -1.6 < -1.0


def test_prompt_task_and_options_reach_the_function(stub) -> None:
    r = verify(stub, "prompt", "whatever", prompt="abcd", bonus="0.5")
    assert r.score == pytest.approx(4.5)  # len("abcd") + float("0.5")


@pytest.mark.parametrize("task, status, detail", [
    ("crash", pb.STATUS_ERROR, "RuntimeError: bug in my reward"),
    ("slow", pb.STATUS_TIMEOUT, "worker killed after"),
    ("hog", pb.STATUS_ERROR, "memory"),
    ("exit", pb.STATUS_ERROR, "worker crashed"),
    ("nan", pb.STATUS_ERROR, "non-finite"),
    ("words", pb.STATUS_ERROR, "not a number"),
])
def test_a_failing_function_is_a_status_without_a_score(stub, task: str, status: int, detail: str) -> None:
    r = verify(stub, task, "<think>a</think> b")
    assert r.status == status, r
    assert not r.HasField("score"), "a failure must never be a (zero) reward"
    assert detail in r.detail


def test_the_pool_recovers_after_kills(stub) -> None:
    """After the timeout, the memory hog and the hard exit, workers were replaced: a batch still scores."""
    items = [pb.VerifyRequest(id=str(i), response="<think>t</think> 7", gold="7", task="fmt") for i in range(6)]
    out = stub.VerifyBatch(pb.VerifyBatchRequest(items=items), timeout=30)
    assert [(r.id, r.status, r.score) for r in out.results] == [(str(i), pb.STATUS_CORRECT, 1.25) for i in range(6)]


def test_examples_gsm8k_and_code(stub) -> None:
    r = verify(stub, "gsm8k_strict", "5 + 7 = 12\n#### 12", gold="Natalia ... #### 12")
    assert (r.status, r.score) == (pb.STATUS_CORRECT, 1.5)  # 0.5 * format + 1.0 * correct
    r = verify(stub, "gsm8k_strict", "#### 12 is it", gold="#### 12")
    assert (r.status, r.score) == (pb.STATUS_CORRECT, 1.0)  # right number, not the strict last line
    r = verify(stub, "gsm8k_strict", "the answer is 12", gold="#### 12")
    assert (r.status, r.score) == (pb.STATUS_NO_ANSWER, 0.0)
    tests = json.dumps(["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"])
    r = verify(stub, "code/add", "Here:\n```python\ndef add(a, b):\n    return a + b\n```", gold=tests)
    assert (r.status, r.score) == (pb.STATUS_WRONG, pytest.approx(2 / 3)), r  # 2 of 3 tests pass
    r = verify(stub, "code/add", "```python\ndef add(a, b) return\n```", gold=tests)
    assert r.status == pb.STATUS_UNPARSABLE and r.score == 0.0
    r = verify(stub, "code/add", "```python\nwhile True:\n    pass\n```", gold=tests, timeout_s="1")
    assert (r.status, r.score) == (pb.STATUS_WRONG, 0.0) and "ran past 1 s" in r.detail
    r = verify(stub, "code/add", "```python\ndef add(a, b):\n    return a + b\n```", gold="  ")
    assert r.status == pb.STATUS_ERROR and not r.HasField("score")  # a gold without tests is the task's fault


def test_other_tasks_still_go_to_the_math_engine(stub) -> None:
    r = verify(stub, "math", r"so \boxed{\frac{6}{8}}", gold="3/4")
    assert r.status == pb.STATUS_CORRECT and not r.HasField("score") and r.path != "reward_fn"


async def test_the_generators_client_reads_the_score(server: int) -> None:
    from winnow.scoring import verifier_client

    async with verifier_client(f"127.0.0.1:{server}", timeout_s=30) as client:
        v = await client.verify_batch([Item(id="a", response="<think>x</think> 9", gold="9", task="fmt"),
                                      Item(id="b", response=r"\boxed{9}", gold="9", task="math"),
                                      Item(id="c", response="x", task="crash", gold="")])
    assert [(x.status, x.score) for x in v] == [(Status.CORRECT, 1.25), (Status.CORRECT, None), (Status.ERROR, None)]


def test_a_function_that_cannot_load_stops_start_up(tmp_path: Path) -> None:
    config = make_config(tmp_path, [{"tasks": ["t"], "functions": [mine("no_such_function")]}])
    proc = subprocess.run([sys.executable, "-m", "winnow", "verifier", "serve", "--config", str(config), "--port",
                           str(free_port()), "--metrics-port", "-1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "verifier.reward_functions" in proc.stderr and "no_such_function" in proc.stderr, proc.stderr



def test_winnow_score_prints_the_functions_score(server: int, stub, tmp_path: Path) -> None:
    """``winnow score --verifier`` against the reward-function verifier: each line carries the weighted score next to
    its status (0.25 x has_think + 1.0 x compute_score, as the gRPC call returns it), a status-only task has no
    ``score``, and an input field named ``score`` is never passed off as the verifier's."""
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "response": "<think>x</think> 7", "gold": "7", "task": "fmt", "score": 99},
            {"id": "b", "response": "no think, 7", "gold": "7", "task": "fmt"},
            {"id": "c", "response": "The answer is \\boxed{4}", "gold": "4", "task": "math", "score": 99}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([PYTHON, "-m", "winnow", "score", str(src), "--verifier", f"127.0.0.1:{server}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert got["a"]["score"] == pytest.approx(1.25) and got["b"]["score"] == pytest.approx(1.0)
    for key in ("a", "b"):
        assert got[key]["score"] == pytest.approx(verify(stub, "fmt", got[key]["response"], "7").score)
    assert got["c"]["status"] == "correct" and "score" not in got["c"]
