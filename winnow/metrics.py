"""Per-process Prometheus registry with ``/metrics`` and ``/health`` over HTTP.

Each service builds its metrics on its own :class:`prometheus_client.CollectorRegistry` (passed
into constructors, never a module global) and serves it with :func:`serve_metrics`.
``/health`` answers 200 ``ok`` while the ``health`` callback returns True, else 503.
Serving a registry also registers on it, once, the standard process collector (``process_*``:
CPU seconds, resident memory, open fds, start time) and ``winnow_build_info`` (value 1, labels
``version`` and ``python_version``), so every service exports them.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, ProcessCollector, generate_latest

_STANDARD_REGISTERED = "_winnow_standard_collectors"


def register_standard_collectors(registry: CollectorRegistry) -> None:
    """Register the process collector and ``winnow_build_info`` on ``registry`` (idempotent)."""
    if getattr(registry, _STANDARD_REGISTERED, False):
        return
    from winnow import __version__

    ProcessCollector(registry=registry)
    info = Gauge(
        "winnow_build_info",
        "Always 1; the labels say which winnow and Python this process runs.",
        ["version", "python_version"],
        registry=registry,
    )
    info.labels(version=__version__, python_version=platform.python_version()).set(1)
    setattr(registry, _STANDARD_REGISTERED, True)


class MetricsServer:
    """A tiny threaded HTTP server: GET /metrics, GET /health. ``port=0`` picks a free port."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        health: Callable[[], bool] | None = None,
    ) -> None:
        register_standard_collectors(registry)
        self.registry = registry
        self.health = health or (lambda: True)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, code, ctype = generate_latest(outer.registry), 200, CONTENT_TYPE_LATEST
                elif path in ("/health", "/healthz", "/ready"):
                    try:
                        ok = bool(outer.health())
                    except Exception:  # a failing health check is "unhealthy", not a crash
                        ok = False
                    body, code, ctype = (b"ok\n", 200, "text/plain") if ok else (b"unhealthy\n", 503, "text/plain")
                else:
                    body, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # silence per-request logs
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "127.0.0.1",
    health: Callable[[], bool] | None = None,
) -> MetricsServer:
    """Start serving ``registry`` on ``host:port`` in a daemon thread and return the server."""
    return MetricsServer(registry, host=host, port=port, health=health).start()


_R = TypeVar("_R", covariant=True)


class Service(Protocol[_R]):
    """What :func:`run_service` runs: a Kafka service (the learner's, a generator's) or the finished learner's
    idle stand-in. ``run`` returns when the service stops (after :meth:`request_stop`, or done)."""

    def healthy(self) -> bool:
        """``/health`` answers 200 while True, else 503."""
        ...

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: stop soon (``run`` returns)."""
        ...

    async def run(self) -> _R: ...


async def run_service(service: Service[_R], registry: CollectorRegistry, port: int, host: str) -> _R:
    """The tail of every Kafka service's process: serve ``/metrics`` and ``/health`` (from
    ``service.healthy()``), turn SIGTERM/SIGINT into ``service.request_stop()``, and return what
    ``await service.run()`` returns, stopping the HTTP server however it ends."""
    import asyncio
    import logging
    import signal

    metrics = serve_metrics(registry, port, host=host, health=service.healthy)
    logging.getLogger(__name__).info("metrics and health on %s:%d", host, metrics.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    try:
        return await service.run()
    finally:
        metrics.stop()
