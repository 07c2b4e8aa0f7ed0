"""The verifier's metrics (verifier/service_metrics.py): the collectors built from the table ``VERIFIER`` expose
exactly the pinned names, types, labels and pre-created series (the dashboards' and alerts' contract; these were the
hand-written collectors' before the table), with the table's HELP; the server reaches only declared collectors."""

from __future__ import annotations

from pathlib import Path

from winnow.verifier.service_metrics import VERIFIER, VerifierMetrics

from ..metric_pins import check_declared_use, check_pinned

ROOT = Path(__file__).resolve().parents[2]

STATUSES = (("correct",), ("wrong",), ("no_answer",), ("unparsable",), ("timeout",), ("too_complex",), ("error",))
# exposed name: (type, label names, pre-created label values). Change a line only together with the dashboards
# (helm/winnow/dashboards, deploy/) and the alerts that read it.
PINNED = {
    "winnow_verifier_requests_total": ("counter", ("rpc", "code"), (("Verify", "OK"), ("VerifyBatch", "OK"))),
    "winnow_verifier_items_total": ("counter", ("status",), STATUSES),
    "winnow_verifier_item_latency_seconds": ("histogram", (), ()),
    "winnow_verifier_request_latency_seconds": ("histogram", ("rpc",), (("Verify",), ("VerifyBatch",))),
    "winnow_verifier_worker_restarts_total": ("counter", ("reason",), ()),
    "winnow_verifier_cache_hits_total": ("counter", (), ()),
    "winnow_verifier_cache_misses_total": ("counter", (), ()),
    "winnow_verifier_cache_hit_ratio": ("gauge", (), ()),
    "winnow_verifier_inflight_items": ("gauge", (), ()),
    "winnow_verifier_paths_total": ("counter", ("path",), ()),
    "winnow_verifier_exceptions_total": ("counter", ("where",), ()),
}


def test_exposed_names_types_labels_and_help_are_pinned():
    check_pinned(VerifierMetrics, VERIFIER, PINNED)

def test_the_servers_modules_use_only_declared_collectors():
    """Every ``metrics.NAME`` read by the verifier's modules is a collector of the table (or a method)."""
    check_declared_use(VerifierMetrics, ROOT / "verifier", "service_metrics.py",
                       {"requests", "inflight_items", "worker_restart"}, "inflight_itmes")
