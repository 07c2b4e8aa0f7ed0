"""The example reward-model verifier (examples/reward_model_verifier/server.py) as a real process on 127.0.0.1
(issue 27 item 3).

The model is a tiny randomly initialised Qwen2 sequence-classification model with the tiny tokenizer of
winnow.learner.tiny, saved to a folder in the test (nothing downloaded). Its scores over gRPC are checked against
the same model run directly in the test (an independent path), batched calls against single ones, and the
generator's Scorer routes a task to it by pattern while math stays with the math verifier.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from winnow.v1 import verifier_pb2 as pb
from winnow.v1 import verifier_pb2_grpc as pb_grpc
from winnow.verdict import Item, Status

from .conftest import PYTHON, ROOT, stop_process

SERVER = ROOT / "examples" / "reward_model_verifier" / "server.py"
PAIRS = [("What is 2 + 3?", "2 + 3 = 5. \\boxed{5}"), ("What is 7 + 1?", "8"), ("Hi", ""),
         ("What is the sum of 4 and 4?", "we get 8, so the answer is \\boxed{8}"), ("x", "one two three " * 20)]


def build_reward_model(directory: Path, num_labels: int = 1) -> Path:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from winnow.learner.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      num_labels=num_labels, pad_token_id=tok.pad_token_id)
    model = Qwen2ForSequenceClassification(cfg)
    with torch.no_grad():  # a random head gives scores near 0; spread them so differences show
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def start(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([PYTHON, str(SERVER), "--model", str(model_dir), "--port", "0", "--device", "cpu", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in proc.stdout:  # logs first, then "reward model verifier listening on 127.0.0.1:PORT"
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    stop_process(proc)
    raise RuntimeError(f"server exited {proc.returncode} without reporting its port")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_reward_model(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[int]:
    proc, port = start(model_dir, "--batch-size", "2")
    try:
        yield port
    finally:
        stop_process(proc)
        assert proc.returncode == 0, "SIGTERM must stop the server gracefully (exit 0)"


@pytest.fixture(scope="module")
def stub(server: int) -> Iterator[pb_grpc.VerifierStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        yield pb_grpc.VerifierStub(channel)


def direct_scores(model_dir: Path) -> list[float]:
    """The same model, one pair at a time, no padding: an independent path to the scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    for prompt, response in PAIRS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                      tokenize=True)
        ids = list(ids["input_ids"]) if not isinstance(ids, list) else ids
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return out


def test_health_serving(server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        h = health_pb2_grpc.HealthStub(channel)
        for service in ("", "winnow.v1.Verifier"):
            assert h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_batched_scores_equal_the_model_run_directly(stub, model_dir: Path) -> None:
    expected = direct_scores(model_dir)
    assert len({round(x, 3) for x in expected}) == len(expected), "the random model must tell the pairs apart"
    items = [pb.VerifyRequest(id=str(i), prompt=p, response=r, task="rm/chat") for i, (p, r) in enumerate(PAIRS)]
    out = stub.VerifyBatch(pb.VerifyBatchRequest(items=items), timeout=60)  # 5 items in forwards of 2, padded
    assert [r.id for r in out.results] == [str(i) for i in range(len(PAIRS))]
    assert all(r.HasField("score") and r.path == "reward_model" for r in out.results)
    assert [r.score for r in out.results] == pytest.approx(expected, abs=1e-4)
    # the status is the score against --pass-score (default 0)
    assert [r.status for r in out.results] == [pb.STATUS_CORRECT if s >= 0 else pb.STATUS_WRONG for s in expected]
    one = stub.Verify(pb.VerifyRequest(id="z", prompt=PAIRS[3][0], response=PAIRS[3][1]), timeout=30)
    assert one.score == pytest.approx(expected[3], abs=1e-4)


async def test_routed_by_task_like_any_verifier(server: int, model_dir: Path) -> None:
    """The generator's Scorer sends task rm/* to this server; math goes to the in-process math verifier."""
    from prometheus_client import CollectorRegistry

    from winnow.generator.config import VerifierRouting
    from winnow.generator.metrics import GeneratorMetrics
    from winnow.generator.scoring import Scorer

    scorer = Scorer(VerifierRouting(endpoints={"rm/*": f"127.0.0.1:{server}"}), GeneratorMetrics(CollectorRegistry()))
    try:
        verdicts = await scorer.score([
            Item(id="a", prompt=PAIRS[0][0], response=PAIRS[0][1], gold="", task="rm/chat"),
            Item(id="b", response="\\boxed{5}", gold="5", task="math"),
            Item(id="c", prompt=PAIRS[1][0], response=PAIRS[1][1], gold="", task="rm/chat"),
        ])
    finally:
        await scorer.close()
    expected = direct_scores(model_dir)
    assert verdicts[0].score == pytest.approx(expected[0], abs=1e-4) and verdicts[0].path == "reward_model"
    assert verdicts[1].status == Status.CORRECT and verdicts[1].score is None
    assert verdicts[2].score == pytest.approx(expected[1], abs=1e-4)


def test_two_label_classifier_scores_the_positive_log_prob(tmp_path: Path) -> None:
    model_dir = build_reward_model(tmp_path / "two", num_labels=2)
    proc, port = start(model_dir)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            r = pb_grpc.VerifierStub(channel).Verify(pb.VerifyRequest(id="a", prompt="Hi", response="8"), timeout=30)
    finally:
        stop_process(proc)
    assert r.HasField("score") and r.score <= 0.0  # a log-probability
