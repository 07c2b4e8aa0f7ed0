"""winnow.metrics: every served registry carries the process collector and winnow_build_info."""

from __future__ import annotations

import platform
import urllib.request

from prometheus_client import CollectorRegistry

import winnow
from winnow.metrics import serve_metrics


def test_served_registry_has_process_metrics_and_build_info() -> None:
    registry = CollectorRegistry()
    first = serve_metrics(registry, 0)
    second = serve_metrics(registry, 0)  # a second server on the same registry registers nothing twice
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{second.port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        first.stop()
        second.stop()
    assert registry.get_sample_value(
        "winnow_build_info", {"version": winnow.__version__, "python_version": platform.python_version()}) == 1
    assert "process_cpu_seconds_total" in body and "process_resident_memory_bytes" in body
    assert body.count("# TYPE winnow_build_info gauge") == 1
    assert first.host == "127.0.0.1"  # loopback unless configured
