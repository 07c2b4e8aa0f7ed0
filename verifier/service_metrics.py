"""The verifier service's Prometheus metrics, declared once: :data:`VERIFIER`, one row
(:class:`winnow.metric_defs.Metric`) per collector, drives the collectors (:class:`VerifierMetrics`, on the process's one
registry) and the verifier's table in ``docs/metrics.md`` (``python scripts/metrics_doc.py``). The names, types, labels
and help are a contract: the dashboards and alerts use them (pinned by tests/verifier/test_service_metrics.py).

The rows live here, in the verifier's package, as the learner's live in its own (:mod:`winnow.learner.metric_table`),
not in the shared layer: the services' tables sit next to the code that sets them, and the pre-created series (:data:`RPCS`) are
the verifier's own.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry

from winnow.metric_defs import Metric, TableMetrics
from winnow.verdict import Status, Verdict

RPCS = ("Verify", "VerifyBatch")
# Per-item latency: the fast paths answer in microseconds, the symbolic path in 10 ms - seconds.
ITEM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _row(key: str, prom: str, help: str, **kw: Any) -> Metric:
    return Metric(key, help, prom, source="service", section="verifier", **kw)


# Pre-created label sets, so that rate() works from the first scrape.
VERIFIER: tuple[Metric, ...] = (
    _row("requests", "winnow_verifier_requests_total", "gRPC calls by method and final gRPC status code",
         kind="counter", labels=("rpc", "code"), label_values=tuple((rpc, "OK") for rpc in RPCS),
         doc="gRPC calls by method (`Verify`, `VerifyBatch`) and final gRPC status code (`OK`, `INVALID_ARGUMENT`, "
             "`UNAUTHENTICATED`, ...)."),
    _row("items", "winnow_verifier_items_total", "Items judged, by verdict status", kind="counter",
         labels=("status",), label_values=tuple((s.label,) for s in Status if s != Status.UNSPECIFIED),
         doc="Items judged, by verdict status (`correct`, `wrong`, `no_answer`, `unparsable`, `timeout`, "
             "`too_complex`, `error`). Error/timeout ratio: `sum(rate(..{status=~\"error|timeout\"}[5m])) / "
             "sum(rate(..[5m]))`."),
    _row("item_latency", "winnow_verifier_item_latency_seconds",
         "Engine time per item (the latency_ms the server reports), in seconds", kind="histogram",
         buckets=ITEM_BUCKETS, doc="Engine time per item (the `latency_ms` the server returns), in seconds."),
    _row("request_latency", "winnow_verifier_request_latency_seconds",
         "Wall time of a gRPC call inside the server, in seconds", kind="histogram", labels=("rpc",),
         label_values=tuple((rpc,) for rpc in RPCS), buckets=REQUEST_BUCKETS,
         doc="Wall time of one gRPC call inside the server."),
    _row("worker_restarts", "winnow_verifier_worker_restarts_total",
         "Engine worker processes replaced, by reason (timeout, crash, memory, recycle, ...)", kind="counter",
         labels=("reason",),
         doc="Sandboxed engine workers replaced, by reason (`timeout`: killed past the per-item budget; `crash`; "
             "`memory`; `recycle`: after `max_tasks_per_worker`)."),
    _row("cache_hits", "winnow_verifier_cache_hits_total", "Verdict cache lookups that hit", kind="counter",
         doc="Verdict-cache lookups that hit (key: canonical gold and answer)."),
    _row("cache_misses", "winnow_verifier_cache_misses_total", "Verdict cache lookups that missed", kind="counter",
         doc="Verdict-cache lookups that missed."),
    _row("cache_hit_ratio", "winnow_verifier_cache_hit_ratio",
         "hits / (hits + misses) since the process started (0 before any lookup)",
         doc="`hits / (hits + misses)` since the process started (0 before any lookup)."),
    _row("inflight_items", "winnow_verifier_inflight_items", "Items handed to the engine and not answered yet",
         doc="Items handed to the engine and not answered yet."),
    _row("paths", "winnow_verifier_paths_total", "Items by the path that decided them", kind="counter",
         labels=("path",),
         doc="Items by the path that decided them (`string`, `number`, `symbolic`, `guard`, `cache`, ...; see "
             "`VerifyResult.path`)."),
    _row("exceptions", "winnow_verifier_exceptions_total",
         "Unexpected exceptions caught at a boundary (each one is a bug to look at)", kind="counter",
         labels=("where",), doc="Unexpected exceptions caught at a boundary; every one is a bug to look at."),
)


class VerifierMetrics(TableMetrics):
    """The verifier's collectors, one per row of :data:`VERIFIER`, reached by the row's key (``metrics.items``,
    ``metrics.inflight_items``). ``worker_restart`` and ``cache`` are the engine's callbacks; ``cache_hit_ratio`` is
    computed at scrape time from the lookups counted here."""

    table = VERIFIER

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self._lock = threading.Lock()
        self._hits = 0
        self._lookups = 0
        self.cache_hit_ratio.set_function(self._ratio)

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
