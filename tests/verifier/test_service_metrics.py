"""The verifier's metrics (verifier/service_metrics.py): the collectors built from the table ``VERIFIER`` expose
exactly the pinned names, types, labels and pre-created series (the dashboards' and alerts' contract; these were the
hand-written collectors' before the table), with the table's HELP; the server reaches only declared collectors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from winnow.verifier.service_metrics import VERIFIER, VerifierMetrics

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


def exposition(registry: CollectorRegistry) -> dict[str, tuple[str, str, list[dict[str, str]]]]:
    """``{exposed name: (type, HELP, label sets of the series)}`` of what ``/metrics`` serves (one series per label
    set: a histogram's ``le`` folded away)."""
    out = {}
    for f in registry.collect():
        name = f.name + "_total" if f.type == "counter" else f.name
        series = []
        for s in f.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            if labels not in series:
                series.append(labels)
        out[name] = (f.type, f.documentation, series)
    return out


def label_names(series: list[dict[str, str]]) -> tuple[str, ...]:
    names = {tuple(s) for s in series if s}
    assert len(names) <= 1, names
    return next(iter(names), ())


def test_exposed_names_types_labels_and_help_are_pinned():
    registry = CollectorRegistry()
    VerifierMetrics(registry)
    fresh = exposition(registry)
    assert sorted(fresh) == sorted(PINNED)
    for name, (kind, labels, values) in PINNED.items():
        assert fresh[name][0] == kind, name
        # the series pre-created at start-up (so rate() works from the first scrape)
        assert [dict(s) for s in fresh[name][2] if s] == [dict(zip(labels, v, strict=True)) for v in values], name
    # the label names, also of the collectors that start without a series: give each one a series
    probed = CollectorRegistry()
    metrics = VerifierMetrics(probed)
    for m in VERIFIER:
        if m.labels:
            getattr(metrics, m.key).labels(*["probe"] * len(m.labels))
    exposed = exposition(probed)
    for name, (_, labels, _) in PINNED.items():
        assert label_names(exposed[name][2]) == labels, name
    # every row is exposed with its HELP (the table is the only declaration)
    assert {m.prom: m.help for m in VERIFIER} == {name: help for name, (_, help, _) in exposed.items()}


def test_the_servers_modules_use_only_declared_collectors():
    """Every ``metrics.NAME`` read by the verifier's modules is a collector of the table (or a method)."""
    metrics = VerifierMetrics(CollectorRegistry())
    used = set()
    for path in (ROOT / "verifier").glob("*.py"):
        if path.name != "service_metrics.py":
            used |= set(re.findall(r"\b_?metrics\.(\w+)", path.read_text()))
    assert {"requests", "inflight_items", "worker_restart"} <= used
    for name in used:
        assert getattr(metrics, name) is not None, name
    with pytest.raises(AttributeError, match="no collector 'inflight_itmes'"):
        _ = metrics.inflight_itmes
