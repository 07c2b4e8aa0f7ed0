"""Shared checks of a service's metric table against its pinned exposition (tests/generator/test_metrics.py,
tests/verifier/test_service_metrics.py): one implementation, each service passes its class, table and pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry


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


def check_pinned(cls, table, pinned: dict) -> None:
    """``cls(registry)`` exposes exactly ``pinned`` (name: (type, label names, pre-created label values)), with the
    table's HELP for every row."""
    registry = CollectorRegistry()
    cls(registry)
    fresh = exposition(registry)
    assert sorted(fresh) == sorted(pinned)
    for name, (kind, labels, values) in pinned.items():
        assert fresh[name][0] == kind, name
        # the series pre-created at start-up (so rate() works from the first scrape)
        assert [dict(s) for s in fresh[name][2] if s] == [dict(zip(labels, v, strict=True)) for v in values], name
    # the label names, also of the collectors that start without a series: give each one a series
    probed = CollectorRegistry()
    metrics = cls(probed)
    for m in table:
        if m.labels:
            getattr(metrics, m.key).labels(*["probe"] * len(m.labels))
    exposed = exposition(probed)
    for name, (_, labels, _) in pinned.items():
        assert label_names(exposed[name][2]) == labels, name
    # every row is exposed with its HELP (the table is the only declaration)
    assert {m.prom: m.help for m in table} == {name: help for name, (_, help, _) in exposed.items()}


def check_declared_use(cls, package: Path, table_file: str, expected: set[str], misspelt: str) -> None:
    """Every ``metrics.NAME`` read by ``package``'s modules (but ``table_file``) is a collector of the table (or a
    method); ``expected`` must be among them, and a ``misspelt`` name raises naming it."""
    metrics = cls(CollectorRegistry())
    used = set()
    for path in package.glob("*.py"):
        if path.name != table_file:
            used |= set(re.findall(r"\b_?metrics\.(\w+)", path.read_text()))
    assert expected <= used
    for name in used:
        assert getattr(metrics, name) is not None, name
    with pytest.raises(AttributeError, match=f"no collector '{misspelt}'"):
        getattr(metrics, misspelt)
