"""The generator service against a real Kafka-protocol broker, the tiny model and the real
in-process math verifier; the scorer against a real gRPC verifier server."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from prometheus_client import CollectorRegistry
from safetensors.torch import save_file

from winnow.brokers import free_port
from winnow.chat import PromptFormatter
from winnow.generator.config import GeneratorConfig, VerifierRouting
from winnow.generator.metrics import GeneratorMetrics
from winnow.generator.scoring import Scorer
from winnow.generator.service import GeneratorService
from winnow.groups import build_group
from winnow.sampling import Completion, SamplingConfig, merge_sampling
from winnow.v1 import messages_pb2
from winnow.verdict import Item, Status, Verdict
from winnow.weight_store import resolve_weight_uri

# ---------------------------------------------------------------------------------- pure parts


def test_merge_sampling_zero_means_default():
    default = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=64, seed=None)
    assert merge_sampling(default, messages_pb2.SamplingParams()) == default
    got = merge_sampling(
        default, messages_pb2.SamplingParams(temperature=0.5, top_k=5, max_new_tokens=9, seed=3)
    )
    assert got == SamplingConfig(temperature=0.5, top_p=1.0, top_k=5, max_new_tokens=9, seed=3)


def test_build_group_fields():
    req = messages_pb2.PromptRequest(
        prompt_id="p/1", request_id="r1", problem="1+1", gold="2", task="math", n=2
    )
    comps = [
        Completion(token_ids=[5, 6, 2], logprobs=[-0.1, -0.2, -0.3], finish_reason="stop", text="\\boxed{2}"),
        Completion(token_ids=[7], logprobs=[-1.5], finish_reason="length", text="x"),
    ]
    verdicts = [
        Verdict(id="r1/0", status=Status.CORRECT, extracted="2"),
        Verdict(id="r1/1", status=Status.NO_ANSWER),
    ]
    g = build_group(
        req,
        [1, 2, 3],
        comps,
        verdicts,
        sampling=SamplingConfig(max_new_tokens=3),
        version=7,
        generator_id="g0",
        generation_seconds=1.5,
        scoring_seconds=0.25,
    )
    assert (g.prompt_id, g.request_id, g.task, g.generator_id, g.policy_version) == (
        "p/1",
        "r1",
        "math",
        "g0",
        7,
    )
    assert list(g.prompt_token_ids) == [1, 2, 3] and g.sampling.max_new_tokens == 3
    s0, s1 = g.samples
    assert list(s0.response_token_ids) == [5, 6, 2] and list(s0.policy_versions) == [7, 7, 7]
    assert list(s0.behaviour_logprobs) == pytest.approx([-0.1, -0.2, -0.3])
    assert (s0.status, s0.extracted, s0.finish_reason) == (Status.CORRECT, "2", "stop")
    assert (s1.status, s1.finish_reason) == (Status.NO_ANSWER, "length")
    assert s0.reward == s1.reward == 0.0  # statuses, not rewards: the learner's algo maps them


def test_resolve_weight_uri(tmp_path):
    store = tmp_path.resolve()
    assert resolve_weight_uri(f"file://{store}/v1/model.safetensors", str(store)) == store / "v1/model.safetensors"
    assert resolve_weight_uri("v1/m.safetensors", str(store)) == store / "v1/m.safetensors"
    with pytest.raises(ValueError, match="s3"):
        resolve_weight_uri("s3://bucket/m.safetensors", str(store))


def test_weights_load_only_from_inside_the_weight_store(tmp_path):
    """Issue 22 item 10: an announcement naming /etc/passwd was opened and hashed. Only paths inside
    weights.root are accepted, after resolving `..` and symlinks; "" means the current directory."""
    store = tmp_path / "store"
    (store / "v1").mkdir(parents=True)
    (store / "v1" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "secret").write_bytes(b"s")
    (store / "v1" / "link.safetensors").symlink_to(tmp_path / "secret")
    (store / "inner").symlink_to(store / "v1")  # a symlink that stays inside is fine
    assert resolve_weight_uri("inner/model.safetensors", str(store)) == (store / "v1/model.safetensors").resolve()
    for uri in ("/etc/passwd", "file:///etc/passwd", "../secret", "v1/../../secret", f"file://{tmp_path}/secret",
                "v1/link.safetensors", "file://localhost/etc/passwd"):
        with pytest.raises(ValueError, match="outside the weight store"):
            resolve_weight_uri(uri, str(store))
    with pytest.raises(ValueError, match="outside the weight store"):
        resolve_weight_uri("/etc/passwd")  # no root: the current directory is the store


def test_version_bounds():
    from winnow.generator.state import version_refusal

    assert version_refusal(7, 6, 100) is None
    assert version_refusal(3, 6, 100) is None  # a learner resumed from an older checkpoint: followed
    assert version_refusal(106, 6, 100) is None
    assert "max_version_jump=100" in version_refusal(107, 6, 100)
    assert "max_version_jump" in version_refusal(2**62, 0, 100_000)
    assert "outside [0, 2^63)" in version_refusal(-1, 0, 100)
    assert "outside [0, 2^63)" in version_refusal(2**63, 0, 2**64)


async def test_refused_announcements_are_counted_and_nothing_is_opened(tiny, tmp_path, monkeypatch):
    """Issue 22 item 10, in the service: /etc/passwd and a version of 2^62 are refused without hashing or
    loading anything, counted by reason, and not retried at the next poll."""
    from winnow.generator import weights as svc
    from winnow.hf_engine import HFEngine

    model, tok = tiny
    registry = CollectorRegistry()
    service = GeneratorService(GeneratorConfig(metrics_port=0, weights={"root": str(tmp_path)}), HFEngine(model, tok),
                               registry)
    opened = []
    monkeypatch.setattr(svc, "sha256_file", lambda path: opened.append(path) or "0" * 64)
    passwd = messages_pb2.WeightAnnouncement(version=1, uri="/etc/passwd", sha256="a" * 64, format="safetensors")
    huge = messages_pb2.WeightAnnouncement(version=2**62, uri="v1/model.safetensors", sha256="b" * 64,
                                           format="safetensors")
    assert await service.weights.load(passwd) is False
    assert await service.weights.load(huge) is False
    assert opened == [] and service.engine.version == 0
    value = registry.get_sample_value
    assert value("winnow_generator_weight_refusals_total", {"reason": "location"}) == 1
    assert value("winnow_generator_weight_refusals_total", {"reason": "version"}) == 1
    assert value("winnow_generator_weight_reload_failures_total") == 0
    assert {(1, "a" * 64), (2**62, "b" * 64)} <= service.state.rejected  # skipped, not retried, at later polls


def test_routing_patterns_first_match_wins():
    r = VerifierRouting(endpoints={"rg/count*": "a:1", "rg/*": "b:2"}, default_endpoint="c:3")
    assert [r.endpoint_for(t) for t in ("rg/countdown", "rg/chain_sum", "gsm8k")] == ["a:1", "b:2", "c:3"]
    assert VerifierRouting().endpoint_for("anything") == ""


# ------------------------------------------------------------------------- scorer over gRPC


class ExactMatchEngine:
    """A real verifier engine for the gRPC server: correct iff the text after the last '=' equals gold."""

    def verify_batch(self, items, deadline_s=None):
        out = []
        for it in items:
            ans = it.response.rsplit("=", 1)[-1].strip() if "=" in it.response else ""
            status = Status.NO_ANSWER if not ans else (Status.CORRECT if ans == it.gold else Status.WRONG)
            out.append(Verdict(id=it.id, status=status, extracted=ans))
        return out




async def _start_verifier(port: int, token: str | None = None):
    from winnow.verifier.config import VerifierConfig
    from winnow.verifier.server import create_server

    server, bound = create_server(
        VerifierConfig(host="127.0.0.1", port=port, metrics_port=-1, token=token), ExactMatchEngine(),
        CollectorRegistry()
    )
    await server.start()
    return server, bound


async def test_scorer_routes_and_handles_verifier_down():
    port = free_port()
    items = [
        Item(id="a", response="x = 4", gold="4", task="arith"),
        Item(id="b", response="x = 5", gold="4", task="arith"),
    ]
    # "error": a dead endpoint marks the samples ERROR (never a silent "wrong") and counts the failure
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry)
    # timeout_s also bounds the client's retries of UNAVAILABLE within one attempt
    scorer = Scorer(
        VerifierRouting(endpoints={"arith": f"127.0.0.1:{port}"}, on_verifier_down="error", timeout_s=0.5),
        metrics,
    )
    verdicts = await scorer.score(items)
    assert [v.status for v in verdicts] == [Status.ERROR, Status.ERROR]
    assert registry.get_sample_value("winnow_generator_verifier_errors_total") == 1
    await scorer.close()
    # "wait": retries until the verifier comes up, then returns its verdicts
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry)
    scorer = Scorer(
        VerifierRouting(endpoints={"arith": f"127.0.0.1:{port}"}, retry_interval_s=0.2, timeout_s=0.5),
        metrics,
    )
    task = asyncio.create_task(scorer.score(items))
    await asyncio.sleep(1.5)
    assert not task.done() and registry.get_sample_value("winnow_generator_verifier_errors_total") >= 1
    server, _ = await _start_verifier(port)
    try:
        verdicts = await asyncio.wait_for(task, 20)
        assert [(v.id, v.status) for v in verdicts] == [("a", Status.CORRECT), ("b", Status.WRONG)]
        assert registry.get_sample_value("winnow_generator_verifier_latency_seconds_count") == 1
    finally:
        await scorer.close()
        await server.stop(0)


async def test_a_batch_the_verifier_refuses_is_scored_error_not_retried_forever():
    """INVALID_ARGUMENT (here: two items with one id) refuses the batch for what it is; under the "wait"
    policy an outage is retried, but a refusal would be refused forever: its samples are scored ERROR."""
    server, port = await _start_verifier(free_port())
    registry = CollectorRegistry()
    scorer = Scorer(VerifierRouting(endpoints={"arith": f"127.0.0.1:{port}"}, retry_interval_s=0.2, timeout_s=2.0),
                    GeneratorMetrics(registry))
    items = [Item(id="a", response="x = 4", gold="4", task="arith"), Item(id="a", response="x = 5", gold="4",
                                                                         task="arith")]
    try:
        verdicts = await asyncio.wait_for(scorer.score(items), 10)
        assert [v.status for v in verdicts] == [Status.ERROR, Status.ERROR]
        assert "INVALID_ARGUMENT" in verdicts[0].detail
        assert registry.get_sample_value("winnow_generator_verifier_errors_total") == 1
    finally:
        await scorer.close()
        await server.stop(0)


async def test_the_verifier_token_is_a_secret_sent_to_the_server(capsys):
    """``verifier.token`` is a SecretStr: hidden by --print-config, sent as the bearer token."""
    from winnow.cli import main

    assert main(["generator", "run", "--set", "verifier.token=s3cret-tok", "--print-config"]) == 0
    assert "s3cret-tok" not in capsys.readouterr().out
    server, port = await _start_verifier(free_port(), token="s3cret-tok")
    routing = VerifierRouting(endpoints={"arith": f"127.0.0.1:{port}"}, token="s3cret-tok", on_verifier_down="error")
    scorer = Scorer(routing, GeneratorMetrics(CollectorRegistry()))
    try:
        verdicts = await scorer.score([Item(id="a", response="x = 4", gold="4", task="arith")])
        assert [v.status for v in verdicts] == [Status.CORRECT]  # a wrong or missing token scores ERROR
    finally:
        await scorer.close()
        await server.stop(0)


# ------------------------------------------------------------------------------ the service


@pytest.fixture(scope="module")
def math_verifier():
    from winnow.verifier.engine import MathVerifier

    v = MathVerifier(workers=1, timeout_s=5.0)
    yield v
    v.close()


def _cfg(kafka_config, **kw) -> GeneratorConfig:
    base = dict(
        kafka=kafka_config.model_dump(),
        group_id="gen-test",
        generator_id="gen-test-0",
        batch_prompts=3,
        batch_wait_ms=200,
        metrics_port=0,
        sampling={"max_new_tokens": 6, "seed": 1},
        weights={"poll_interval_s": 0.1},
        kafka_partitions=2,
    )
    base.update(kw)
    return GeneratorConfig(**base)


def _request(i: int, n: int = 3) -> messages_pb2.PromptRequest:
    return messages_pb2.PromptRequest(
        prompt_id=f"toy/{i}",
        request_id=f"req-{i}",
        problem=f"What is {i} + 1?",
        gold=str(i + 1),
        task="math",
        n=n,
        release_version=0,
        released_at=time.time(),
    )


async def _produce(cfg: GeneratorConfig, msgs, raw: list[bytes] = ()) -> None:
    from winnow.kafka import make_producer, send, topics

    producer = make_producer(cfg.kafka)
    await producer.start()
    try:
        for m in msgs:
            await send(
                producer,
                topics(cfg.kafka).prompts
                if isinstance(m, messages_pb2.PromptRequest)
                else topics(cfg.kafka).weights,
                m,
            )
        for data in raw:
            await producer.send_and_wait(topics(cfg.kafka).prompts, data, key=b"junk")
    finally:
        await producer.stop()


async def _collect_groups(
    cfg: GeneratorConfig, n: int, timeout_s: float = 60.0
) -> list[messages_pb2.ScoredGroup]:
    from winnow.kafka import ScoredGroup, decode_record, make_consumer, topics

    consumer = make_consumer(cfg.kafka, [topics(cfg.kafka).groups], "test-reader")
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out += [decode_record(ScoredGroup, r) for r in records]
    finally:
        await consumer.stop()
    return out


async def _committed(cfg: GeneratorConfig) -> int:
    from aiokafka import TopicPartition

    from winnow.kafka import make_consumer, topics

    consumer = make_consumer(cfg.kafka, None, cfg.group_id)
    await consumer.start()
    try:
        tps = [TopicPartition(topics(cfg.kafka).prompts, p) for p in range(cfg.kafka_partitions)]
        return sum([(await consumer.committed(tp)) or 0 for tp in tps])
    finally:
        await consumer.stop()


async def _stop(service: GeneratorService, task: asyncio.Task) -> None:
    service.request_stop()
    await asyncio.wait_for(task, 30)


async def test_service_publishes_scored_groups_and_commits(kafka_config, tiny, math_verifier):
    from winnow.hf_engine import HFEngine
    from winnow.kafka import ensure_topics

    model, tok = tiny
    cfg = _cfg(kafka_config)
    await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
    requests = [_request(i) for i in range(5)]
    await _produce(cfg, requests, raw=[b"\xff\x00 not a prompt request"])
    registry = CollectorRegistry()
    service = GeneratorService(cfg, HFEngine(model, tok), registry, in_process_verifier=math_verifier)
    task = asyncio.create_task(service.run())
    try:
        groups = await _collect_groups(cfg, 5)
        assert sorted(g.request_id for g in groups) == [f"req-{i}" for i in range(5)]
        fmt = PromptFormatter(tok, cfg.chat)
        for g in groups:
            req = requests[int(g.request_id.split("-")[1])]
            assert g.prompt_id == req.prompt_id and g.task == "math" and g.generator_id == "gen-test-0"
            assert list(g.prompt_token_ids) == fmt(req.problem)
            assert len(g.samples) == 3 and g.policy_version == 0 and g.sampling.max_new_tokens == 6
            for s in g.samples:
                assert 1 <= len(s.response_token_ids) <= 6
                assert len(s.behaviour_logprobs) == len(s.policy_versions) == len(s.response_token_ids)
                assert set(s.policy_versions) == {0} and all(lp <= 0 for lp in s.behaviour_logprobs)
                assert s.finish_reason in ("stop", "length")
                # a random tiny model writes no \boxed{}: the real verifier says so (not ERROR)
                assert s.status not in (Status.UNSPECIFIED, Status.ERROR)
                assert s.reward == 0.0  # the learner maps statuses to rewards
        # every record, the corrupt one included, is committed once its group is published
        deadline = time.monotonic() + 20
        while (committed := await _committed(cfg)) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert committed == 6
        value = registry.get_sample_value
        assert value("winnow_generator_groups_published_total") == 5
        assert value("winnow_generator_corrupt_messages_total") == 1
        assert value("winnow_generator_tokens_total") == sum(
            len(s.response_token_ids) for g in groups for s in g.samples
        )
        assert value("winnow_generator_generation_seconds_count") >= 2  # 5 requests in batches of <= 3
        assert value("winnow_generator_verifier_latency_seconds_count") >= 2
        assert value("winnow_generator_weight_version") == 0
        assert service.healthy()
    finally:
        await _stop(service, task)
    assert not service.healthy()


async def test_service_loads_announced_weights_and_rejects_bad_sha(
    kafka_config_one, tiny, math_verifier, tmp_path
):
    from winnow.hf_engine import HFEngine
    from winnow.kafka import ensure_topics
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=0)  # its own copy: this test changes the weights
    cfg = _cfg(kafka_config_one, weights={"poll_interval_s": 0.1, "root": str(tmp_path)})
    await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
    other, _ = build_tiny_model_and_tokenizer(seed=1)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items() if k != "lm_head.weight"},
        str(tmp_path / "v2.safetensors"),
    )
    digest = hashlib.sha256((tmp_path / "v2.safetensors").read_bytes()).hexdigest()
    registry = CollectorRegistry()
    engine = HFEngine(model, tok)
    service = GeneratorService(cfg, engine, registry, in_process_verifier=math_verifier)
    task = asyncio.create_task(service.run())
    value = registry.get_sample_value
    try:
        bad = messages_pb2.WeightAnnouncement(
            version=1, uri="v2.safetensors", sha256="0" * 64, format="safetensors"
        )
        await _produce(cfg, [bad])
        deadline = time.monotonic() + 30
        while value("winnow_generator_weight_reload_failures_total") < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert value("winnow_generator_weight_reload_failures_total") == 1
        assert engine.version == 0
        good = messages_pb2.WeightAnnouncement(
            version=2, uri=f"file://{tmp_path}/v2.safetensors", sha256=digest, format="safetensors"
        )
        await _produce(cfg, [good])
        deadline = time.monotonic() + 30
        while engine.version != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert engine.version == 2 and value("winnow_generator_weight_version") == 2
        assert value("winnow_generator_weight_reload_seconds_count") == 1
        await _produce(cfg, [_request(i, n=2) for i in range(2)])
        groups = await _collect_groups(cfg, 2)
        assert len(groups) == 2
        for g in groups:
            assert g.policy_version == 2
            assert all(set(s.policy_versions) == {2} for s in g.samples)
        assert value("winnow_generator_weight_reload_failures_total") == 1  # the bad one is not retried
    finally:
        await _stop(service, task)


class _WrongVerifier:
    """An in-process verifier stand-in: every answer is wrong."""

    def verify_batch(self, items):
        return [Verdict(id=it.id, status=Status.WRONG) for it in items]


async def test_groups_are_signed_when_a_group_key_is_set(kafka_config_one, tiny, monkeypatch):
    """Issue 22: with WINNOW_GROUP_HMAC_KEY set the generator signs every group; the learner's check
    (verify_group_record) accepts it under that key and refuses it under another."""
    from winnow.hf_engine import HFEngine
    from winnow.kafka import HMAC_KEY_ENV, ensure_topics, make_consumer, topics, verify_group_record

    monkeypatch.setenv(HMAC_KEY_ENV, "k" * 32)
    model, tok = tiny
    cfg = _cfg(kafka_config_one, sampling={"max_new_tokens": 2, "seed": 1})
    await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
    await _produce(cfg, [_request(i, n=2) for i in range(2)])
    service = GeneratorService(cfg, HFEngine(model, tok), CollectorRegistry(), in_process_verifier=_WrongVerifier())
    task = asyncio.create_task(service.run())
    consumer = make_consumer(cfg.kafka, [topics(cfg.kafka).groups], "test-raw-reader")
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + 60
        while len(records) < 2 and time.monotonic() < deadline:
            records += [r for rs in (await consumer.getmany(timeout_ms=200)).values() for r in rs]
    finally:
        await consumer.stop()
        await _stop(service, task)
    assert len(records) == 2
    assert all(verify_group_record(r, b"k" * 32) for r in records)
    assert not any(verify_group_record(r, b"o" * 32) for r in records)


async def test_stop_mid_batch_abandons_it_and_the_next_generator_gets_it(kafka_config_one, math_verifier):
    from winnow.hf_engine import HFEngine
    from winnow.kafka import ensure_topics
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    cfg = _cfg(kafka_config_one, sampling={"max_new_tokens": 300, "seed": 1}, batch_wait_ms=500)
    await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
    await _produce(cfg, [_request(i, n=16) for i in range(3)])
    registry = CollectorRegistry()
    first = GeneratorService(cfg, HFEngine(model, tok), registry, in_process_verifier=math_verifier)
    task = asyncio.create_task(first.run())
    value = registry.get_sample_value
    deadline = time.monotonic() + 30
    while not value("winnow_generator_requests_in_flight") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert value("winnow_generator_requests_in_flight") > 0  # the batch is generating
    await _stop(first, task)  # SIGTERM's handler: cancels the generation, nothing published
    assert value("winnow_generator_groups_published_total") == 0
    assert value("winnow_generator_generation_seconds_count") == 0
    assert await _committed(cfg) == 0
    # the next generator of the group gets the same prompts
    second = GeneratorService(
        cfg.model_copy(update={"sampling": SamplingConfig(max_new_tokens=4)}),
        HFEngine(model, tok),
        CollectorRegistry(),
        in_process_verifier=math_verifier,
    )
    task = asyncio.create_task(second.run())
    try:
        groups = await _collect_groups(cfg, 3)
        assert sorted(g.request_id for g in groups) == ["req-0", "req-1", "req-2"]
        assert all(len(g.samples) == 16 for g in groups)
    finally:
        await _stop(second, task)


def test_poison_requests_are_quarantined_not_generated(tiny):
    """Issue 13 fault 2: a request with max_new_tokens above the bound, or a 200k-character prompt, is refused
    before generation (counted, its offset committed by the caller) instead of crashing the generator."""
    from winnow.hf_engine import HFEngine

    model, tok = tiny
    registry = CollectorRegistry()
    service = GeneratorService(GeneratorConfig(max_prompt_tokens=512, metrics_port=0), HFEngine(model, tok), registry)
    assert service.quarantine(_request(1)) is False
    too_many = _request(2)
    too_many.sampling.max_new_tokens = 10_000_000
    assert service.quarantine(too_many) is True
    huge = _request(3)
    huge.problem = "1 + " * 50_000
    assert service.quarantine(huge) is True
    assert registry.get_sample_value("winnow_generator_quarantined_requests_total", {"reason": "sampling"}) == 1
    assert registry.get_sample_value("winnow_generator_quarantined_requests_total", {"reason": "prompt"}) == 1


def test_a_request_for_a_million_samples_is_quarantined_not_generated(tiny):
    """Issue 22 item 7: a 53-byte request with n = 1,000,000 crashed the generator on every restart. Every count
    and size a request carries is bounded before anything is allocated: n, n x max_new_tokens against a Kafka
    message, ids/gold/verifier options, and the prompt's characters before it is tokenized."""
    from winnow.hf_engine import HFEngine

    model, tok = tiny

    class _NoGeneration(HFEngine):
        def generate(self, *a, **kw):
            raise AssertionError("a quarantined request reached the engine")

    registry = CollectorRegistry()
    service = GeneratorService(GeneratorConfig(metrics_port=0, max_prompt_tokens=512), _NoGeneration(model, tok),
                               registry)
    value = registry.get_sample_value
    million = _request(1, n=1_000_000)
    assert len(million.SerializeToString()) < 64
    assert service.quarantine(million) is True
    assert value("winnow_generator_quarantined_requests_total", {"reason": "n"}) == 1
    # n within max_group_size, but n x max_new_tokens cannot fit one 8 MiB message: 1024 x 65536 x 6 bytes
    wide = _request(2, n=1024)
    wide.sampling.max_new_tokens = 65_536
    assert service.quarantine(wide) is True
    # big ids, gold or verifier options
    gold = _request(3)
    gold.gold = "9" * 100_000
    options = _request(4)
    options.verifier_options.update({f"k{i}": "v" for i in range(100)})
    assert service.quarantine(gold) is True and service.quarantine(options) is True
    assert value("winnow_generator_quarantined_requests_total", {"reason": "size"}) == 3
    # a prompt too long to fit max_prompt_tokens is refused before the tokenizer sees it
    service.formatter = lambda *a: (_ for _ in ()).throw(AssertionError("tokenized"))
    long = _request(5)
    long.problem = "x" * (512 * 64 + 1)
    many = _request(6)
    many.messages.extend(messages_pb2.ChatMessage(role="user", content="") for _ in range(513))
    assert service.quarantine(long) is True and service.quarantine(many) is True
    assert value("winnow_generator_quarantined_requests_total", {"reason": "prompt"}) == 2
    assert GeneratorConfig(max_group_size=64).max_group_size == 64
    with pytest.raises(ValueError, match="max_group_size"):
        GeneratorConfig(max_group_size=0)


def test_a_group_too_large_for_a_kafka_message_is_dropped_and_counted(tiny):
    """A group that came out larger than kafka.max_message_bytes would make send() raise and the batch crash-loop;
    it is dropped and counted instead (its request times out at the learner and is released again)."""
    from winnow.hf_engine import HFEngine

    model, tok = tiny
    registry = CollectorRegistry()
    service = GeneratorService(GeneratorConfig(metrics_port=0, kafka={"max_message_bytes": 64 * 1024}),
                               HFEngine(model, tok), registry)
    small = messages_pb2.ScoredGroup(request_id="a", prompt_id="p", prompt_token_ids=[1])
    big = messages_pb2.ScoredGroup(request_id="b", prompt_id="p", prompt_token_ids=[1], problem="x" * 64 * 1024)
    assert service.publishable([small, big]) == [small]
    assert registry.get_sample_value("winnow_generator_quarantined_requests_total", {"reason": "size"}) == 1


@pytest.mark.timeout(60)  # the old code retried the refused batch forever
async def test_a_request_twice_in_one_batch_is_scored_not_refused(tiny, math_verifier):
    """Found by the fault e2e test: after a learner restart a re-released request can sit in one
    batch next to its original record. The verifier API refuses duplicate item ids
    (verifier.server.check_unique_ids), which left the generator retrying that batch forever;
    item ids are unique by batch position, both groups are published and the learner drops the
    second by its request id."""
    from winnow.hf_engine import HFEngine
    from winnow.verifier.server import check_unique_ids

    class StrictVerifier:  # the gRPC server's id rule in front of the real engine
        def verify_batch(self, items, deadline_s=None):
            check_unique_ids([it.id for it in items])
            return math_verifier.verify_batch(items)

    model, tok = tiny
    service = GeneratorService(
        GeneratorConfig(metrics_port=0), HFEngine(model, tok), CollectorRegistry(), in_process_verifier=StrictVerifier()
    )
    groups = await service.process([_request(1, n=2), _request(1, n=2)])
    assert [g.request_id for g in groups] == ["req-1", "req-1"]
    assert all(len(g.samples) == 2 for g in groups)
