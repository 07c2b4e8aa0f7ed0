"""Fixtures for the operations tests: the tools (helm, promtool, prometheus, hadolint) and processes.

Tools are looked up in ``.tools/bin`` (where scripts/install_tools.py puts them), then on PATH. A
missing tool skips its tests on a developer machine, and fails them in CI (``CI=true``), where
scripts/install.sh must have installed it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
CHART = ROOT / "helm" / "winnow"
PYTHON = sys.executable


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Path of ``name``; skip (developer machine) or fail (CI) with the install hint when missing."""
    path = find_tool(name)
    if path is None:
        msg = (f"{name} not found in .tools/bin or on PATH: run `.venv/bin/python scripts/install_tools.py` "
               "(as root for promtool/prometheus: Debian package `prometheus`)")
        if in_ci():
            pytest.fail(f"CI=true and {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return require_tool("helm")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require_tool("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process we started (by its handle), then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Append every Popen you start; they are stopped (by handle) at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in reversed(started):
        stop_process(proc)
