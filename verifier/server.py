"""The winnow.v1.Verifier gRPC service around the grading engine (grpc.aio).

``create_server(cfg, engine, registry)`` builds a server bound to ``cfg.host:cfg.port`` (port 0
picks one) and returns it with the bound port, so tests run it on loopback; ``serve(cfg)`` is the
process: engine + server + metrics HTTP + signal handling.

- The engine is blocking and CPU-bound (its own worker processes): every call runs in a thread pool,
  never on the event loop, so health checks and new calls keep flowing while a batch is scored.
- Limits: ``max_receive_message_length`` (gRPC itself answers RESOURCE_EXHAUSTED before the message is
  parsed), derived from the config (``VerifierConfig.receive_limit_bytes``: ``max_batch_items`` items of
  ``max_item_bytes``, capped by ``max_message_bytes``); items per batch and duplicate ids (INVALID_ARGUMENT).
- Budgets: every call's engine work is bounded by ``batch_deadline_s`` and by the client's own deadline
  (``call_budget``), whichever ends first; items left then are TIMEOUT. An engine failure for one item is that item's STATUS_ERROR
  (the engine's job); a failure of the whole call is INTERNAL. Every outcome is counted.
- The standard health service (``""`` and ``winnow.v1.Verifier``) and server reflection are
  registered. With a token configured, every Verifier call must carry ``authorization: Bearer
  <token>``; health (Kubernetes probes cannot send headers; it reveals only SERVING/NOT_SERVING)
  and reflection (the schema is the public proto) stay open.
- Shutdown: health goes NOT_SERVING first, then ``server.stop(grace_s)`` lets in-flight calls end.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from winnow.v1 import verifier_pb2, verifier_pb2_grpc
from winnow.verifier.config import VerifierConfig
from winnow.verifier.service_metrics import VerifierMetrics
from winnow.verifier.types import Item, Verdict
from winnow.verifier.wire import item_from_proto, verdict_to_proto

log = logging.getLogger("winnow.verifier.server")

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name  # "winnow.v1.Verifier"
SERVICE_METHODS = frozenset(m.name for m in verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].methods)


def method_label(method: str) -> str:
    """The ``method`` metric label: one of the service's own RPC names, else ``other`` (a caller cannot
    create new series by calling made-up method names)."""
    prefix = f"/{SERVICE_NAME}/"
    name = method[len(prefix) :] if method.startswith(prefix) else ""
    return name if name in SERVICE_METHODS else "other"
# Open without a token: health (Kubernetes probes cannot send headers) and reflection (the schema is
# public: it is protos/winnow/v1/verifier.proto). Both reveal nothing about the data.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")  # fmt: skip


class Engine(Protocol):
    """What the server needs from the grading engine (``winnow.verifier.engine.MathVerifier``)."""

    def verify_batch(self, items: list[Item], deadline_s: float | None = None) -> list[Verdict]: ...


_Reply = TypeVar("_Reply")


class RpcAbort(Exception):
    """Ends the current call with ``code`` and ``message`` (raised inside a handler)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(
        self, cfg: VerifierConfig, engine: Engine, metrics: VerifierMetrics, executor: ThreadPoolExecutor
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.metrics = metrics
        self.executor = executor

    async def Verify(  # noqa: N802
        self, request: verifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyResult:
        async def handle() -> verifier_pb2.VerifyResult:
            (verdict,) = await self._score([item_from_proto(request)], context)
            return verdict_to_proto(verdict)

        return await self._call("Verify", handle, context)

    async def VerifyBatch(  # noqa: N802
        self, request: verifier_pb2.VerifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyBatchResponse:
        async def handle() -> verifier_pb2.VerifyBatchResponse:
            n = len(request.items)
            if n > self.cfg.max_batch_items:
                raise RpcAbort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch has {n} items, more than max_batch_items={self.cfg.max_batch_items}: "
                    "split it into several VerifyBatch calls",
                )
            check_unique_ids([it.id for it in request.items])
            if n == 0:
                return verifier_pb2.VerifyBatchResponse()
            verdicts = await self._score([item_from_proto(it) for it in request.items], context)
            return verifier_pb2.VerifyBatchResponse(results=[verdict_to_proto(v) for v in verdicts])

        return await self._call("VerifyBatch", handle, context)

    async def _call(self, rpc: str, handle: Callable[[], Awaitable[_Reply]],
                    context: grpc.aio.ServicerContext) -> _Reply:
        """Runs one RPC: times it, maps failures to status codes, counts the outcome."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        message = ""
        try:
            return await handle()
        except RpcAbort as e:
            code, message = e.code, e.message
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # process boundary: a bug in the engine or here, never a verdict
            log.exception("%s failed", rpc)
            self.metrics.exceptions.labels("rpc").inc()
            code, message = grpc.StatusCode.INTERNAL, f"verifier failed on this call: {type(e).__name__}: {e}"
        finally:
            self.metrics.requests.labels(rpc, code.name).inc()
            self.metrics.request_latency.labels(rpc).observe(time.perf_counter() - start)
        await context.abort(code, message)

    async def _score(self, items: list[Item], context: grpc.aio.ServicerContext | None = None) -> list[Verdict]:
        deadline = call_budget(self.cfg.batch_deadline_s, context.time_remaining() if context is not None else None)
        n = len(items)
        self.metrics.inflight_items.inc(n)
        # The gauge drops when the engine is done, even if the caller cancelled meanwhile (the engine
        # call cannot be interrupted; it is bounded by batch_deadline_s).
        future = self.executor.submit(_verify_batch, self.engine, items, deadline)
        future.add_done_callback(lambda _: self.metrics.inflight_items.dec(n))
        verdicts = await asyncio.wrap_future(future)
        if len(verdicts) != len(items):
            raise RuntimeError(f"engine returned {len(verdicts)} verdicts for {len(items)} items")
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict.id != item.id:
                raise RuntimeError(f"engine returned verdict id {verdict.id!r} for item id {item.id!r}")
        self.metrics.observe_verdicts(verdicts)
        return verdicts


def call_budget(batch_deadline_s: float, client_remaining_s: float | None) -> float | None:
    """The engine's budget for one call: ``batch_deadline_s`` (0 = none), cut to the time the client still
    waits. Work for a caller whose deadline has passed would only hold a thread that other clients need."""
    budgets = [b for b in (batch_deadline_s or None, client_remaining_s) if b is not None]
    return max(0.0, min(budgets)) if budgets else None


def _verify_batch(engine: Engine, items: list[Item], deadline_s: float | None) -> list[Verdict]:
    return engine.verify_batch(items, deadline_s=deadline_s)


def check_unique_ids(ids: list[str]) -> None:
    """Ids are optional (results come back in order) but the non-empty ones must be unique."""
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if not item_id:
            continue
        if item_id in seen:
            raise RpcAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"duplicate id {item_id!r} at items[{seen[item_id]}] and items[{i}]: ids must be unique "
                "within a batch (or left empty)",
            )
        seen[item_id] = i


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (health and reflection excepted)."""

    def __init__(self, token: str, metrics: VerifierMetrics) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        self._metrics.requests.labels(method_label(method), grpc.StatusCode.UNAUTHENTICATED.name).inc()
        return _deny(handler)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key.lower() == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False


_DENY_MESSAGE = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""
    if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
        return None

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENY_MESSAGE)

    async def streaming(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENY_MESSAGE)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


class VerifierServer:
    """A started-or-not grpc.aio server plus its health state. Use ``await start()``/``await stop()``."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: HealthServicer,
        executor: ThreadPoolExecutor,
        metrics: VerifierMetrics,
    ) -> None:
        self.server = server
        self.health = health
        self.metrics = metrics
        self._executor = executor
        self.serving = False

    async def start(self) -> None:
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace`` seconds."""
        self.serving = False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self.server.wait_for_termination(timeout)


def create_server(
    cfg: VerifierConfig,
    engine: Engine,
    registry: CollectorRegistry,
    *,
    metrics: VerifierMetrics | None = None,
) -> tuple[VerifierServer, int]:
    """Build the server (not started) on ``cfg.host:cfg.port``; returns it and the bound port.

    ``metrics`` defaults to a new :class:`VerifierMetrics` on ``registry``; pass the one given to
    the engine's callbacks so that everything lands on the same collectors.
    """
    metrics = metrics or VerifierMetrics(registry)
    token = cfg.resolve_token()
    tls = cfg.read_tls()
    options = [
        ("grpc.max_receive_message_length", cfg.receive_limit_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if cfg.max_connection_age_s > 0:  # clients reconnect and re-resolve DNS: pods the HPA adds get traffic
        options += [("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(max(cfg.batch_deadline_s, 30.0) * 1000))]
    executor = ThreadPoolExecutor(max_workers=max(4, 2 * cfg.engine_workers), thread_name_prefix="verify")
    server = grpc.aio.server(
        interceptors=[TokenAuthInterceptor(token, metrics)] if token else None,
        options=options,
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs or None,
    )
    verifier_pb2_grpc.add_VerifierServicer_to_server(VerifierServicer(cfg, engine, metrics, executor), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{cfg.host}:{cfg.port}"
    if ":" in cfg.host and not cfg.host.startswith("["):
        address = f"[{cfg.host}]:{cfg.port}"
    if tls is not None:
        cert, key = tls
        creds = grpc.ssl_server_credentials([(key, cert)])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the verifier to {address}")
    return VerifierServer(server, health, executor, metrics), port


def build_engine(cfg: VerifierConfig, metrics: VerifierMetrics):
    """The real grading engine with the metrics callbacks wired in (imports sympy: call lazily); with
    ``reward_functions.routes``, a :class:`~winnow.verifier.rewards.RoutedEngine` in front of it."""
    from winnow.verifier.engine import MathVerifier

    routes = cfg.reward_functions.routes
    math_engine = MathVerifier(
        workers=cfg.engine_workers,
        timeout_s=cfg.timeout_s,
        memory_mb=cfg.memory_mb,
        max_tasks_per_worker=cfg.max_tasks_per_worker,
        cache_size=cfg.cache_size,
        default_options=cfg.default_options,
        idle_warmup=True,  # a long-running service: warm the grammar and sympy caches while idle
        on_worker_restart=metrics.worker_restart,
        on_cache=metrics.cache,
        lazy_pool=bool(routes),  # with reward functions the math path may never be used
    )
    if not routes:
        return math_engine
    from winnow.verifier.rewards import RewardEngine, RoutedEngine

    try:
        rewards = RewardEngine(cfg.reward_functions, on_worker_restart=metrics.worker_restart)
    except BaseException:
        math_engine.close()
        raise
    return RoutedEngine(rewards, math_engine)


async def serve(cfg: VerifierConfig, *, ready: Callable[[int, int | None], None] | None = None) -> int:
    """Run the verifier until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop).

    ``ready(grpc_port, metrics_port)`` is called once the server is serving.
    """
    from winnow.metrics import serve_metrics

    log.info("verifier config: %s", cfg.model_dump_json())  # the token prints as **********
    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    engine = build_engine(cfg, metrics)
    metrics_server = None
    try:
        server, port = create_server(cfg, engine, registry, metrics=metrics)
        if cfg.metrics_port >= 0:
            metrics_server = serve_metrics(
                registry, cfg.metrics_port, host=cfg.metrics_host or cfg.host, health=lambda: server.serving
            )
        await server.start()
        mport = metrics_server.port if metrics_server else None
        log.info(
            "winnow verifier serving %s on %s:%d (%s, auth %s, %d workers); metrics %s",
            SERVICE_NAME,
            cfg.host,
            port,
            "TLS" if cfg.tls.enabled else "plaintext",
            "bearer token" if cfg.resolve_token() else "off",
            cfg.engine_workers,
            f"on {cfg.metrics_host or cfg.host}:{mport}" if mport is not None else "disabled",
        )
        if ready:
            ready(port, mport)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: NOT_SERVING, draining in-flight calls for up to %.1fs", cfg.grace_s)
        await server.stop(cfg.grace_s)
        log.info("verifier stopped")
        return 0
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        close = getattr(engine, "close", None)
        if close is not None:
            close()
