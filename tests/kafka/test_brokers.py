"""Local brokers: start, readiness, stop by PID, clear start-up errors, ensure_broker."""

import os
import socket

import pytest

from winnow.brokers import BrokerError, LocalBroker, bootstrap_reachable, ensure_broker, probe_metadata


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("kind", ["tansu", "noida"])
def test_start_answers_kafka_and_stop_by_pid(kind, tmp_path):
    broker = LocalBroker(kind, tmp_path)
    with broker as bootstrap:
        host, port = bootstrap.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert probe_metadata(host, int(port))
        pid = broker.pid
        assert _pid_alive(pid)
    assert broker.pid is None and not _pid_alive(pid)
    assert not probe_metadata(host, int(port), timeout=0.3)
    assert broker.log_path.is_file() and broker.log_path.stat().st_size > 0


def test_probe_rejects_non_kafka_port():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not probe_metadata("127.0.0.1", port, timeout=0.3)  # accepts, never answers
    assert not probe_metadata("127.0.0.1", port, timeout=0.3)  # closed


def test_start_failure_reports_log_tail(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalBroker("tansu", tmp_path, port=port, start_timeout_s=5)
        with pytest.raises(BrokerError, match=r"tansu broker (exited|did not answer).*log tail"):
            broker.start()
    assert broker.pid is None


def test_unknown_kind(tmp_path):
    with pytest.raises(BrokerError, match="unknown broker kind"):
        LocalBroker("kafka", tmp_path)


def test_ensure_broker(tmp_path, kafka_bootstrap_one):
    bootstrap, broker = ensure_broker(kafka_bootstrap_one, "tansu", tmp_path)
    assert (bootstrap, broker) == (kafka_bootstrap_one, None)  # reachable: used as is
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    bootstrap, broker = ensure_broker(dead, "tansu", tmp_path)
    try:
        assert broker is not None and bootstrap != dead and bootstrap_reachable(bootstrap)
    finally:
        broker.stop()
    bootstrap, broker = ensure_broker(None, "tansu", tmp_path / "x")
    try:
        assert broker is not None and bootstrap_reachable(bootstrap)
    finally:
        broker.stop()
