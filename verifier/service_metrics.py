"""Prometheus metrics of the verifier service, built on the process's one registry.

The names are a contract (dashboards and alerts use them); docs/verifier.md gives each formula.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from winnow.verifier.types import Status, Verdict

RPCS = ("Verify", "VerifyBatch")
# Per-item latency: the fast paths answer in microseconds, the symbolic path in 10 ms - seconds.
ITEM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class VerifierMetrics:
    """All verifier metrics. ``worker_restart`` and ``cache`` are the engine's callbacks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "winnow_verifier_requests_total",
            "gRPC calls by method and final gRPC status code",
            ["rpc", "code"],
            registry=registry,
        )
        self.items = Counter(
            "winnow_verifier_items_total", "Items judged, by verdict status", ["status"], registry=registry
        )
        self.item_latency = Histogram(
            "winnow_verifier_item_latency_seconds",
            "Engine time per item (the latency_ms the server reports), in seconds",
            buckets=ITEM_BUCKETS,
            registry=registry,
        )
        self.request_latency = Histogram(
            "winnow_verifier_request_latency_seconds",
            "Wall time of a gRPC call inside the server, in seconds",
            ["rpc"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.worker_restarts = Counter(
            "winnow_verifier_worker_restarts_total",
            "Engine worker processes replaced, by reason (timeout, crash, memory, recycle, ...)",
            ["reason"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "winnow_verifier_cache_hits_total", "Verdict cache lookups that hit", registry=registry
        )
        self.cache_misses = Counter(
            "winnow_verifier_cache_misses_total", "Verdict cache lookups that missed", registry=registry
        )
        self.cache_hit_ratio = Gauge(
            "winnow_verifier_cache_hit_ratio",
            "hits / (hits + misses) since the process started (0 before any lookup)",
            registry=registry,
        )
        self.inflight_items = Gauge(
            "winnow_verifier_inflight_items", "Items handed to the engine and not answered yet", registry=registry
        )
        self.paths = Counter(
            "winnow_verifier_paths_total", "Items by the path that decided them", ["path"], registry=registry
        )
        self.exceptions = Counter(
            "winnow_verifier_exceptions_total",
            "Unexpected exceptions caught at a boundary (each one is a bug to look at)",
            ["where"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._hits = 0
        self._lookups = 0
        self.cache_hit_ratio.set_function(self._ratio)
        # Pre-create the label sets so that rate() works from the first scrape.
        for rpc in RPCS:
            self.request_latency.labels(rpc)
            self.requests.labels(rpc, "OK")
        for s in Status:
            if s != Status.UNSPECIFIED:
                self.items.labels(s.label)

    # -- engine callbacks (called from engine threads) --------------------------------------------
    def worker_restart(self, reason: str) -> None:
        self.worker_restarts.labels(str(reason) or "unknown").inc()

    def cache(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()
        with self._lock:
            self._lookups += 1
            self._hits += bool(hit)

    def _ratio(self) -> float:
        with self._lock:
            return self._hits / self._lookups if self._lookups else 0.0

    # -- server side ------------------------------------------------------------------------------
    def observe_verdicts(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            status = v.status if v.status != Status.UNSPECIFIED else Status.ERROR
            self.items.labels(status.label).inc()
            self.paths.labels(v.path or "none").inc()
            self.item_latency.observe(max(0.0, v.latency_ms) / 1000.0)
