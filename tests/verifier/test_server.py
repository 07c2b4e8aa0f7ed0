"""The verifier gRPC service on a real loopback server with the real engine: round trips, limits,
auth, TLS, health, metrics scrape, failure mapping, and SIGTERM of a `winnow verifier serve`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from winnow.config import ConfigError, load_config
from winnow.metrics import serve_metrics
from winnow.v1 import verifier_pb2, verifier_pb2_grpc
from winnow.verdict import Item, Status
from winnow.verifier.client import VerifierClient, VerifierError, VerifierUnavailableError
from winnow.verifier.config import VerifierConfig
from winnow.verifier.server import build_engine

S = verifier_pb2


def req(id_: str, response: str, gold: str) -> verifier_pb2.VerifyRequest:
    return S.VerifyRequest(id=id_, response=response, gold=gold)


# (response, gold, expected status): unambiguous cases any sane math verifier agrees on.
MIXED = [
    (r"so the answer is \boxed{42}", "42", S.STATUS_CORRECT),
    (r"\boxed{41}", "42", S.STATUS_WRONG),
    ("I am not sure.", "7", S.STATUS_NO_ANSWER),
    (r"\boxed{\frac{1}{2}}", "0.5", S.STATUS_CORRECT),
    (r"\boxed{3/4}", r"\frac{3}{4}", S.STATUS_CORRECT),
    (r"\boxed{-5}", "5", S.STATUS_WRONG),
]


def scrape(registry_port: int) -> dict[tuple[str, tuple], float]:
    """All samples of a /metrics page: {(name, sorted label items): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{registry_port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_verify_and_batch_round_trip_in_order(start_server):
    srv = await start_server()
    async with grpc.aio.insecure_channel(srv.target) as ch:
        stub = verifier_pb2_grpc.VerifierStub(ch)
        one = await stub.Verify(req("only", r"The answer is \boxed{42}.", "42"))
        assert (one.id, one.status, one.extracted) == ("only", S.STATUS_CORRECT, "42")
        assert one.latency_ms >= 0 and one.path

        items = [req(f"item-{i}", r, g) for i, (r, g, _) in enumerate(MIXED * 3)]
        items.reverse()  # ids not sorted: order must follow the request, not the ids
        res = await stub.VerifyBatch(S.VerifyBatchRequest(items=items))
        assert [r.id for r in res.results] == [it.id for it in items]
        expected = [st for _, _, st in MIXED * 3][::-1]
        assert [r.status for r in res.results] == expected

        empty = await stub.VerifyBatch(S.VerifyBatchRequest())
        assert list(empty.results) == []
        # empty ids are allowed (results are positional), even several of them
        anon = await stub.VerifyBatch(S.VerifyBatchRequest(items=[req("", r"\boxed{1}", "1")] * 3))
        assert [r.status for r in anon.results] == [S.STATUS_CORRECT] * 3


async def test_batch_limit_and_duplicate_ids_are_invalid_argument(start_server):
    srv = await start_server(max_batch_items=3)
    async with grpc.aio.insecure_channel(srv.target) as ch:
        stub = verifier_pb2_grpc.VerifierStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.VerifyBatch(S.VerifyBatchRequest(items=[req(str(i), r"\boxed{1}", "1") for i in range(4)]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "4 items" in e.value.details() and "max_batch_items=3" in e.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.VerifyBatch(
                S.VerifyBatchRequest(items=[req("a", "x", "1"), req("b", "x", "1"), req("a", "y", "2")])
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "duplicate id 'a' at items[0] and items[2]" in e.value.details()

        ok = await stub.VerifyBatch(S.VerifyBatchRequest(items=[req(str(i), r"\boxed{1}", "1") for i in range(3)]))
        assert len(ok.results) == 3
    assert srv.metrics.requests.labels("VerifyBatch", "INVALID_ARGUMENT")._value.get() == 2
    assert srv.metrics.requests.labels("VerifyBatch", "OK")._value.get() == 1


async def test_message_too_large_is_resource_exhausted(start_server):
    srv = await start_server(max_message_bytes=8192)
    async with grpc.aio.insecure_channel(srv.target) as ch:
        stub = verifier_pb2_grpc.VerifierStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Verify(req("big", "x" * 20_000 + r"\boxed{1}", "1"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = await stub.Verify(req("small", r"\boxed{1}", "1"))  # the server is still fine
        assert small.status == S.STATUS_CORRECT


async def test_token_auth(start_server):
    srv = await start_server(token="s3cret")
    async with grpc.aio.insecure_channel(srv.target) as ch:
        stub = verifier_pb2_grpc.VerifierStub(ch)
        for metadata in [(), (("authorization", "Bearer nope"),), (("authorization", "s3cret"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Verify(req("a", r"\boxed{1}", "1"), metadata=metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in e.value.details()
        ok = await stub.Verify(req("a", r"\boxed{1}", "1"), metadata=(("authorization", "Bearer s3cret"),))
        assert ok.status == S.STATUS_CORRECT
        # health stays open for Kubernetes probes (they cannot send headers)
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert srv.metrics.requests.labels("Verify", "UNAUTHENTICATED")._value.get() == 3
    assert srv.metrics.requests.labels("Verify", "OK")._value.get() == 1

    async with VerifierClient(srv.target, token="s3cret", retry_total_s=0) as good:
        assert [v.status for v in await good.verify_batch([Item("x", r"\boxed{2}", "2")])] == [Status.CORRECT]
    async with VerifierClient(srv.target, token="wrong", retry_total_s=0) as bad:
        with pytest.raises(VerifierError, match="UNAUTHENTICATED") as e:
            await bad.verify_batch([Item("x", r"\boxed{2}", "2")])
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("WINNOW_VERIFIER_TOKEN", "from-env")
    assert load_config(VerifierConfig).resolve_token() == "from-env"
    monkeypatch.delenv("WINNOW_VERIFIER_TOKEN")
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert load_config(VerifierConfig, overrides={"token_file": str(f)}).resolve_token() == "from-file"
    assert load_config(VerifierConfig).resolve_token() is None
    with pytest.raises(ConfigError, match="token_file"):
        load_config(VerifierConfig, overrides={"token_file": str(tmp_path / "missing")}).resolve_token()
    with pytest.raises(ConfigError, match="cert_file and tls.key_file"):
        load_config(VerifierConfig, overrides={"tls": {"cert_file": "/x.pem"}})
    with pytest.raises(ConfigError, match="tls.cert_file: cannot read"):
        missing = str(tmp_path / "nope.pem")
        load_config(VerifierConfig, overrides={"tls": {"cert_file": missing, "key_file": missing}}).read_tls()
    with pytest.raises(ConfigError, match="max_batch_items"):
        load_config(VerifierConfig, overrides={"max_batch_items": 0})


async def test_tls_with_self_signed_cert(start_server, self_signed_cert):
    cert, key = self_signed_cert
    srv = await start_server(tls={"cert_file": str(cert), "key_file": str(key)})
    async with VerifierClient(srv.target, root_certificates=cert, retry_total_s=0) as client:
        (v,) = await client.verify_batch([Item("t", r"\boxed{12}", "12")])
        assert v.status == Status.CORRECT and v.id == "t"
    # a plaintext client cannot talk to a TLS port
    async with VerifierClient(srv.target, retry_total_s=0.0, timeout_s=5) as plain:
        with pytest.raises(VerifierError):
            await plain.verify(Item("t", r"\boxed{12}", "12"))


async def test_health_service_and_metrics_health_follow_serving_state(start_server):
    srv = await start_server()
    http = serve_metrics(srv.registry, 0, health=lambda: srv.server.serving)
    try:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ("", "winnow.v1.Verifier"):
                res = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert res.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert urllib.request.urlopen(f"http://127.0.0.1:{http.port}/health", timeout=5).status == 200
        await srv.server.stop(0)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{http.port}/health", timeout=5)
        assert e.value.code == 503
    finally:
        http.stop()


async def test_metrics_scrape_counts_calls(start_server):
    srv = await start_server(max_batch_items=4, make_engine=build_engine, cache_size=64)
    http = serve_metrics(srv.registry, 0)
    try:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = verifier_pb2_grpc.VerifierStub(ch)
            await stub.Verify(req("a", r"\boxed{42}", "42"))  # correct
            await stub.VerifyBatch(
                S.VerifyBatchRequest(
                    items=[req("b", r"\boxed{42}", "42"), req("c", r"\boxed{41}", "42"), req("d", "I am not sure.", "42")]
                )
            )  # correct, wrong, no_answer
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.VerifyBatch(S.VerifyBatchRequest(items=[req(str(i), "x", "1") for i in range(5)]))
            # a symbolic item twice: the engine's verdict cache misses, then hits (fast paths skip it)
            sym = req("e", r"\boxed{(x+17)^2 - 34x}", "x^2+289")
            first, second = await stub.Verify(sym), await stub.Verify(sym)
            assert (first.status, second.status) == (S.STATUS_CORRECT, S.STATUS_CORRECT)
            assert second.path == "cache"
        m = scrape(http.port)
    finally:
        http.stop()

    def val(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert val("winnow_verifier_requests_total", rpc="Verify", code="OK") == 3
    assert val("winnow_verifier_requests_total", rpc="VerifyBatch", code="OK") == 1
    assert val("winnow_verifier_requests_total", rpc="VerifyBatch", code="INVALID_ARGUMENT") == 1
    # 6 items judged: a, b, e, e correct; c wrong; d no_answer (the rejected batch never reached the engine)
    assert val("winnow_verifier_items_total", status="correct") == 4
    assert val("winnow_verifier_items_total", status="wrong") == 1
    assert val("winnow_verifier_items_total", status="no_answer") == 1
    assert val("winnow_verifier_items_total", status="error") == 0
    assert val("winnow_verifier_item_latency_seconds_count") == 6
    assert val("winnow_verifier_request_latency_seconds_count", rpc="Verify") == 3
    assert val("winnow_verifier_request_latency_seconds_count", rpc="VerifyBatch") == 2
    assert val("winnow_verifier_inflight_items") == 0
    assert sum(v for (name, _), v in m.items() if name == "winnow_verifier_paths_total") == 6
    assert val("winnow_verifier_paths_total", path="cache") == 1
    # the engine's cache callbacks feed the counters: 1 miss then 1 hit, ratio 1 / (1 + 1)
    assert val("winnow_verifier_cache_misses_total") == 1
    assert val("winnow_verifier_cache_hits_total") == 1
    assert val("winnow_verifier_cache_hit_ratio") == 0.5


def test_cache_ratio_and_restart_callbacks():
    from prometheus_client import CollectorRegistry

    from winnow.verifier.service_metrics import VerifierMetrics

    metrics = VerifierMetrics(CollectorRegistry())
    assert metrics._ratio() == 0.0
    for hit in (True, False, True, True):
        metrics.cache(hit)
    assert metrics._ratio() == 0.75  # 3 hits / 4 lookups
    assert metrics.cache_hits._value.get() == 3 and metrics.cache_misses._value.get() == 1
    metrics.worker_restart("timeout")
    metrics.worker_restart("timeout")
    assert metrics.worker_restarts.labels("timeout")._value.get() == 2


class BrokenEngine:
    """An engine whose whole batch call fails (a bug), to check the INTERNAL mapping."""

    def verify_batch(self, items, deadline_s=None):
        raise RuntimeError("engine exploded")


class ShortEngine:
    """An engine that breaks the contract (fewer verdicts than items)."""

    def __init__(self, inner):
        self.inner = inner

    def verify_batch(self, items, deadline_s=None):
        return self.inner.verify_batch(items, deadline_s=deadline_s)[:-1]


async def test_whole_call_failure_is_internal_and_counted(start_server, engine):
    for broken in (BrokenEngine(), ShortEngine(engine)):
        srv = await start_server(engine_override=broken)
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = verifier_pb2_grpc.VerifierStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.VerifyBatch(S.VerifyBatchRequest(items=[req("a", r"\boxed{1}", "1"), req("b", "", "1")]))
            assert e.value.code() == grpc.StatusCode.INTERNAL
            assert "verifier failed on this call" in e.value.details()
            # the server keeps serving after a failed call
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Verify(req("c", r"\boxed{1}", "1"))
        assert srv.metrics.requests.labels("VerifyBatch", "INTERNAL")._value.get() == 1
        assert srv.metrics.exceptions.labels("rpc")._value.get() == 2
        assert srv.metrics.inflight_items._value.get() == 0


class SlowEngine:
    """The real engine behind a fixed delay: shows the event loop is never blocked by scoring."""

    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def verify_batch(self, items, deadline_s=None):
        time.sleep(self.delay_s)
        return self.inner.verify_batch(items, deadline_s=deadline_s)


async def test_scoring_does_not_block_the_event_loop(start_server, engine):
    srv = await start_server(engine_override=SlowEngine(engine, 1.5))
    async with grpc.aio.insecure_channel(srv.target) as ch:
        batch = asyncio.ensure_future(
            verifier_pb2_grpc.VerifierStub(ch).VerifyBatch(S.VerifyBatchRequest(items=[req("a", r"\boxed{1}", "1")]))
        )
        await asyncio.sleep(0.2)
        t = time.perf_counter()
        res = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert res.status == health_pb2.HealthCheckResponse.SERVING
        assert time.perf_counter() - t < 0.5, "health check waited for the batch"
        assert srv.metrics.inflight_items._value.get() == 1
        assert not batch.done()
        assert (await batch).results[0].status == S.STATUS_CORRECT


async def test_client_chunks_and_keeps_order(start_server):
    srv = await start_server(max_batch_items=5)
    items = [Item(f"i{i}", rf"\boxed{{{i % 7}}}", str(i % 5)) for i in range(23)]
    async with VerifierClient(srv.target, max_batch_items=5, concurrency=3) as client:
        verdicts = await client.verify_batch(items)
    assert [v.id for v in verdicts] == [it.id for it in items]
    # i % 7 == i % 5 exactly for i in 0..4 and 35.. (not reached): 5 correct of 23
    assert [v.status == Status.CORRECT for v in verdicts] == [i < 5 for i in range(23)]
    assert srv.metrics.requests.labels("VerifyBatch", "OK")._value.get() == 5  # ceil(23 / 5)


async def test_client_gives_up_on_unavailable_within_budget():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    async with VerifierClient(f"127.0.0.1:{port}", retry_total_s=1.0, timeout_s=2) as client:
        with pytest.raises(VerifierUnavailableError, match="unavailable for"):
            await client.verify_batch([Item("a", r"\boxed{1}", "1")])
    assert time.monotonic() - t < 4.0


def _read_until(stream, pattern: str, timeout_s: float) -> tuple[re.Match, str]:
    """Read lines from a subprocess stream until ``pattern`` matches (or fail with what was read)."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m, "".join(seen)
    raise AssertionError(f"{pattern!r} not seen in:\n{''.join(seen)}")


@pytest.mark.slow
async def test_sigterm_stops_serve_gracefully_after_in_flight_call(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WINNOW_VERIFIER_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "winnow", "verifier", "serve", "--port", "0", "--metrics-port", "0", "--workers", "1",
         "--set", "grace_s=60"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        m, _ = await asyncio.to_thread(
            _read_until, proc.stderr, r"on 127\.0\.0\.1:(\d+) .*metrics on 127\.0\.0\.1:(\d+)", 60
        )
        port, mport = int(m.group(1)), int(m.group(2))
        # Many distinct symbolic items: the batch takes a while, long enough to SIGTERM mid-flight.
        items = [
            req(f"s{i}", rf"\boxed{{(x+{i})^{{2}} - x^{{2}} - {i}x}}", rf"{i}x+{i * i}") for i in range(1, 200)
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = asyncio.ensure_future(
                verifier_pb2_grpc.VerifierStub(ch).VerifyBatch(S.VerifyBatchRequest(items=items), timeout=120)
            )
            for _ in range(400):  # wait until the server reports the items in flight
                if scrape(mport).get(("winnow_verifier_inflight_items", ()), 0) > 0:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the batch never showed up as in flight")
            proc.send_signal(signal.SIGTERM)
            res = await call  # the in-flight call completes
        assert [r.id for r in res.results] == [it.id for it in items]
        assert all(r.status != S.STATUS_UNSPECIFIED for r in res.results)
        rc = await asyncio.to_thread(proc.wait, 60)
        rest = proc.stderr.read()
        assert rc == 0, rest
        assert "NOT_SERVING" in rest and "verifier stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_client_deadline_counts_cancelled_and_inflight_drains(start_server, engine):
    srv = await start_server(engine_override=SlowEngine(engine, 2.0))
    async with grpc.aio.insecure_channel(srv.target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await verifier_pb2_grpc.VerifierStub(ch).Verify(req("a", r"\boxed{1}", "1"), timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert srv.metrics.inflight_items._value.get() == 1  # the engine is still on it
    for _ in range(100):
        if srv.metrics.inflight_items._value.get() == 0:
            break
        await asyncio.sleep(0.05)
    assert srv.metrics.inflight_items._value.get() == 0
    assert srv.metrics.requests.labels("Verify", "CANCELLED")._value.get() == 1


async def test_made_up_method_names_do_not_create_metric_series(start_server):
    """Issue 13 fault 7: each unauthenticated call to an invented method used to add a series."""
    from winnow.verifier.server import method_label

    assert method_label("/winnow.v1.Verifier/Verify") == "Verify"
    assert method_label("/winnow.v1.Verifier/Xyz123") == "other"
    assert method_label("/other.Service/Verify") == "other"
    srv = await start_server(token="s3cret")
    async with grpc.aio.insecure_channel(srv.target) as ch:
        for i in range(20):
            call = ch.unary_unary(f"/winnow.v1.Verifier/Made{i}", request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"")
    series = {s.labels["rpc"] for m in srv.registry.collect() if m.name == "winnow_verifier_requests"
              for s in m.samples}
    assert series <= {"Verify", "VerifyBatch", "other"}, series


async def test_client_round_robin_spreads_calls_over_several_verifiers(start_server):
    """Issue 13: with pick-first one verifier got every call; round_robin over an ipv4: target listing
    three real servers on 127.0.0.1 gives each of them calls (a headless Service's dns:/// name
    resolves to the pod addresses the same way)."""
    servers = [await start_server() for _ in range(3)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    async with VerifierClient(target, retry_total_s=10) as client:
        for i in range(30):
            assert (await client.verify(Item(f"i{i}", r"\boxed{2}", "2"))).status == Status.CORRECT
    counts = [s.metrics.requests.labels("Verify", "OK")._value.get() for s in servers]
    assert sum(counts) == 30 and all(c >= 5 for c in counts), counts  # round-robin: about 10 each


async def test_client_waits_for_a_verifier_that_starts_late(start_server, engine):
    """wait_for_ready: a call made while nothing listens completes once the server comes up."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with VerifierClient(f"127.0.0.1:{port}", retry_total_s=20) as client:
        call = asyncio.ensure_future(client.verify(Item("late", r"\boxed{3}", "3")))
        await asyncio.sleep(0.5)
        assert not call.done()
        srv = await start_server(port=port)
        assert (await asyncio.wait_for(call, 30)).status == Status.CORRECT
    assert srv.metrics.requests.labels("Verify", "OK")._value.get() == 1


def test_service_config_asks_for_round_robin_and_retries():
    import json

    from winnow.verifier.client import service_config

    cfg = json.loads(service_config())
    assert cfg["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = cfg["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 5
