"""Fixtures for the verifier service tests: the real engine, and real gRPC servers on loopback.

- ``engine`` (session): one real :class:`MathVerifier` (1 worker) shared by the service tests;
  closed at the end of the session.
- ``start_server``: async factory ``await start_server(engine_override=None, make_engine=None,
  **cfg_fields)`` that starts a server on 127.0.0.1 port 0 with a fresh registry and returns a
  :class:`Running`; ``make_engine=server.build_engine`` gives the server its own engine wired to its
  metrics. Every server (and engine) it started is stopped at teardown.
- ``self_signed_cert``: a (cert.pem, key.pem) pair for 127.0.0.1/localhost, made with openssl.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from winnow.config import load_config
from winnow.verifier.config import VerifierConfig
from winnow.verifier.server import VerifierServer, create_server
from winnow.verifier.service_metrics import VerifierMetrics


@pytest.fixture(scope="session")
def engine():
    from winnow.verifier.engine import MathVerifier

    eng = MathVerifier(workers=1, timeout_s=2.0, memory_mb=1024, max_tasks_per_worker=500, cache_size=4096)
    yield eng
    eng.close()


@dataclass
class Running:
    server: VerifierServer
    port: int
    registry: CollectorRegistry
    metrics: VerifierMetrics
    cfg: VerifierConfig

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def start_server(engine):
    started: list[Running] = []
    closers: list = []

    async def start(engine_override=None, make_engine=None, **fields) -> Running:
        """``make_engine(cfg, metrics)`` builds a dedicated engine wired to this server's metrics."""
        cfg = load_config(VerifierConfig, overrides={"host": "127.0.0.1", "port": 0, "workers": 1, **fields})
        registry = CollectorRegistry()
        metrics = VerifierMetrics(registry)
        if make_engine is not None:
            engine_override = make_engine(cfg, metrics)
            closers.append(engine_override.close)
        server, port = create_server(cfg, engine_override or engine, registry, metrics=metrics)
        await server.start()
        running = Running(server, port, registry, metrics, cfg)
        started.append(running)
        return running

    yield start
    for r in started:
        await r.server.stop(0)
    for close in closers:
        close()


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
