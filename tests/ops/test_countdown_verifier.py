"""The example Countdown verifier (examples/countdown_verifier/server.py), over real gRPC.

The server runs as a subprocess on 127.0.0.1 port 0 (it prints the port it bound) and is called
with the generated ``winnow.v1.Verifier`` stub, exactly as the generator calls any verifier.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from winnow.v1 import verifier_pb2 as pb
from winnow.v1 import verifier_pb2_grpc as pb_grpc

from .conftest import PYTHON, ROOT, stop_process

SERVER = ROOT / "examples" / "countdown_verifier" / "server.py"
TOKEN = "s3cret-test-token"


def start_server(*extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([PYTHON, str(SERVER), "--port", "0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    line = proc.stdout.readline()  # "countdown verifier listening on 127.0.0.1:PORT"
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        stop_process(proc)
        raise RuntimeError(f"server did not report its port: {line!r} {proc.stdout.read()}")
    return proc, int(m.group(1))


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    proc, port = start_server()
    try:
        yield port
    finally:
        stop_process(proc)
        assert proc.returncode == 0, "SIGTERM must stop the server gracefully (exit 0)"


@pytest.fixture(scope="module")
def stub(server: int) -> Iterator[pb_grpc.VerifierStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        yield pb_grpc.VerifierStub(channel)


def verify(stub, response: str, gold: str = "", **options: str) -> pb.VerifyResult:
    return stub.Verify(pb.VerifyRequest(id="x", response=response, gold=gold, task="countdown", options=options),
                       timeout=10)


def test_health_service_serving(server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "winnow.v1.Verifier"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_correct_expression(stub) -> None:
    # 94*4 = 376; 376 - 61 = 315; 315 - 6 = 309
    r = verify(stub, "<think>try 94*4</think><answer>94*4 - 61 - 6</answer>",
               gold=json.dumps({"numbers": [6, 61, 94, 4], "target": 309}))
    assert r.status == pb.STATUS_CORRECT, r
    assert r.extracted == "94*4 - 61 - 6"
    assert r.id == "x" and r.latency_ms >= 0


def test_gold_as_reference_solution_and_exact_fractions(stub) -> None:
    # gold "42*(30 - 4 - 23)" = 42*3 = 126 with numbers {42, 30, 4, 23}
    r = verify(stub, r"so \boxed{(30 - 23 - 4)*42}", gold="42*(30 - 4 - 23)")
    assert r.status == pb.STATUS_CORRECT, r
    # 8/3*3 is exactly 8 with Fractions (floats would also pass here; 1/3*3 == 1 both ways) and a
    # trailing "= 8" is ignored
    r = verify(stub, "<answer>8/3*3 = 8</answer>", numbers="8,3,3", target="8")
    assert r.status == pb.STATUS_CORRECT, r


@pytest.mark.parametrize(
    "answer, why",
    [
        ("94*4 - 61 - 7", "uses numbers not available"),  # 7 is not one of the numbers
        ("94*4 - 61", "does not use every number"),  # 6 unused
        ("94*4 - 61 + 6", "evaluates to 321"),  # 376 - 61 + 6 = 321
        ("94*4*(61 - 61)", "uses numbers not available"),  # 61 twice
    ],
)
def test_wrong_numbers_or_value(stub, answer: str, why: str) -> None:
    r = verify(stub, f"<answer>{answer}</answer>", numbers="6,61,94,4", target="309")
    assert r.status == pb.STATUS_WRONG, r
    assert why in r.detail


def test_division_by_zero_is_wrong(stub) -> None:
    r = verify(stub, "<answer>(5 - 5)/(3 - 3)</answer>", numbers="5,5,3,3", target="1")
    assert r.status == pb.STATUS_WRONG and "division by zero" in r.detail


def test_no_answer(stub) -> None:
    r = verify(stub, "I do not know.", numbers="1,2", target="3")
    assert r.status == pb.STATUS_NO_ANSWER


@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('touch {marker}')",
        "open('{marker}', 'w')",
        "[x for x in ().__class__.__bases__[0].__subclasses__()] or open('{marker}','w')",
        "(lambda: open('{marker}', 'w'))()",
        "2**10**10",  # power: refused before any evaluation
    ],
)
def test_unsafe_payload_is_unparsable_and_not_executed(stub, tmp_path, payload: str) -> None:
    marker = tmp_path / "pwned"
    r = verify(stub, f"<answer>{payload.format(marker=marker)}</answer>", numbers="2,10,10", target="1")
    assert r.status == pb.STATUS_UNPARSABLE, r
    assert "not allowed" in r.detail
    assert not marker.exists(), "the payload was executed"


def test_too_long_answer_is_too_complex(stub) -> None:
    r = verify(stub, "<answer>" + "+".join(["1"] * 400) + "</answer>", numbers="1", target="1")
    assert r.status == pb.STATUS_TOO_COMPLEX


def test_bad_gold_is_error_not_wrong(stub) -> None:
    r = verify(stub, "<answer>1+2</answer>", gold="not a puzzle")
    assert r.status == pb.STATUS_ERROR and r.path == "gold"


def test_batch_keeps_order(stub) -> None:
    items = [
        pb.VerifyRequest(id="a", response="<answer>1+2</answer>", options={"numbers": "1,2", "target": "3"}),
        pb.VerifyRequest(id="b", response="<answer>1*2</answer>", options={"numbers": "1,2", "target": "3"}),
        pb.VerifyRequest(id="c", response="nothing", options={"numbers": "1,2", "target": "3"}),
    ]
    out = stub.VerifyBatch(pb.VerifyBatchRequest(items=items), timeout=10)
    assert [(r.id, r.status) for r in out.results] == [
        ("a", pb.STATUS_CORRECT), ("b", pb.STATUS_WRONG), ("c", pb.STATUS_NO_ANSWER)]


def test_token_required_when_configured() -> None:
    proc, port = start_server("--token", TOKEN)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.VerifierStub(channel)
            req = pb.VerifyRequest(id="t", response="<answer>1+2</answer>", options={"numbers": "1,2", "target": "3"})
            with pytest.raises(grpc.RpcError) as err:
                stub.Verify(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Verify(req, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")])
            assert ok.status == pb.STATUS_CORRECT
    finally:
        stop_process(proc)


def test_reasoning_gym_countdown_entries(stub) -> None:
    """The generator sends reasoning-gym's countdown entries as task "rg/countdown" with gold = the reference
    expression; the verifier derives numbers and target from it. Every reference is CORRECT, and a
    perturbed one (last number + 1) is WRONG."""
    reasoning_gym = pytest.importorskip("reasoning_gym")
    ds = reasoning_gym.create_dataset("countdown", size=40, seed=7)
    items = []
    for i, entry in enumerate(ds):
        gold = entry["answer"]
        items.append(pb.VerifyRequest(id=f"ok{i}", response=f"\\boxed{{{gold}}}", gold=gold, task="rg/countdown"))
        # the same expression with one number changed: not the given numbers any more
        bad = re.sub(r"(\d+)(?!.*\d)", lambda m: str(int(m.group(1)) + 1), gold)
        items.append(pb.VerifyRequest(id=f"bad{i}", response=f"<answer>{bad}</answer>", gold=gold, task="rg/countdown"))
        md = entry["metadata"]
        assert sorted(md["numbers"]) == sorted(int(x) for x in re.findall(r"\d+", gold))  # the premise
    out = stub.VerifyBatch(pb.VerifyBatchRequest(items=items), timeout=30)
    for r in out.results:
        expected = pb.STATUS_CORRECT if r.id.startswith("ok") else pb.STATUS_WRONG
        assert r.status == expected, r
