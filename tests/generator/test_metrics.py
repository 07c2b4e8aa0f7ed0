"""The generator's metrics (generator/metrics.py): the collectors built from the table ``GENERATOR`` expose exactly
the pinned names, types, labels and pre-created series (the dashboards' and alerts' contract; these were the
hand-written collectors' before the table), with the table's HELP; the service reaches only declared collectors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from winnow.generator.metrics import GENERATOR, GeneratorMetrics

ROOT = Path(__file__).resolve().parents[2]

# exposed name: (type, label names, pre-created label values). Change a line only together with the dashboards
# (helm/winnow/dashboards, deploy/) and the alerts that read it.
PINNED = {
    "winnow_generator_tokens_total": ("counter", (), ()),
    "winnow_generator_groups_published_total": ("counter", (), ()),
    "winnow_generator_requests_in_flight": ("gauge", (), ()),
    "winnow_generator_weight_version": ("gauge", (), ()),
    "winnow_generator_weight_reload_seconds": ("histogram", (), ()),
    "winnow_generator_weight_reload_failures_total": ("counter", (), ()),
    "winnow_generator_weight_reload_inplace": ("gauge", (), ()),
    "winnow_generator_weight_reload_fallback": ("gauge", (), ()),
    "winnow_generator_weight_refusals_total": ("counter", ("reason",), (("location",), ("version",))),
    "winnow_generator_verifier_latency_seconds": ("histogram", (), ()),
    "winnow_generator_verifier_errors_total": ("counter", (), ()),
    "winnow_generator_consumer_lag": ("gauge", (), ()),
    "winnow_generator_generation_seconds": ("histogram", (), ()),
    "winnow_generator_corrupt_messages_total": ("counter", (), ()),
    "winnow_generator_quarantined_requests_total": ("counter", ("reason",),
                                                    (("sampling",), ("prompt",), ("n",), ("size",))),
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
    GeneratorMetrics(registry)
    fresh = exposition(registry)
    assert sorted(fresh) == sorted(PINNED)
    for name, (kind, labels, values) in PINNED.items():
        assert fresh[name][0] == kind, name
        # the series pre-created at start-up (so rate() works from the first scrape)
        assert [dict(s) for s in fresh[name][2] if s] == [dict(zip(labels, v, strict=True)) for v in values], name
    # the label names, also of the collectors that start without a series: give each one a series
    probed = CollectorRegistry()
    metrics = GeneratorMetrics(probed)
    for m in GENERATOR:
        if m.labels:
            getattr(metrics, m.key).labels(*["probe"] * len(m.labels))
    exposed = exposition(probed)
    for name, (_, labels, _) in PINNED.items():
        assert label_names(exposed[name][2]) == labels, name
    # every row is exposed with its HELP (the table is the only declaration)
    assert {m.prom: m.help for m in GENERATOR} == {name: help for name, (_, help, _) in exposed.items()}


def test_the_services_modules_use_only_declared_collectors():
    """Every ``metrics.NAME`` read by the generator's modules is a collector of the table (or a method)."""
    metrics = GeneratorMetrics(CollectorRegistry())
    used = set()
    for path in (ROOT / "generator").glob("*.py"):
        if path.name != "metrics.py":
            used |= set(re.findall(r"\b_?metrics\.(\w+)", path.read_text()))
    assert {"weight_version", "quarantined", "tokens"} <= used
    for name in used:
        assert getattr(metrics, name) is not None, name
    with pytest.raises(AttributeError, match="no collector 'weight_versoin'"):
        _ = metrics.weight_versoin
