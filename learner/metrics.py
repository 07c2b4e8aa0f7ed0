"""The learner's Prometheus metrics, built from its metric table (:data:`winnow.learner.metric_table.LEARNER`: names relied
on by the dashboard and alerts, documented in docs/metrics.md), and the ``metrics.jsonl`` writer."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from winnow.learner.book import Outcome, RequestBook
from winnow.learner.metric_table import LEARNER
from winnow.metric_defs import TableMetrics, export_step

if TYPE_CHECKING:
    from winnow.learner.step import StepResult

log = logging.getLogger("winnow.learner.service")


class LearnerMetrics(TableMetrics):
    """The learner's Prometheus collectors, one per Prometheus name of :data:`~winnow.learner.metric_table.LEARNER`
    (names, help, kinds and labels are declared there); a collector is reached as an attribute named by its row's
    key (``metrics.weight_version``, ``metrics.keep_rate``). The tracking sinks' error counter is the Tracker's."""

    table = tuple(m for m in LEARNER if m.key != "tracking_errors")

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        for o in Outcome:
            self.group_outcomes.labels(outcome=o.value)
        self._exported: collections.Counter[str] = collections.Counter()

    def observe_samples(self, labels: Iterable[str]) -> None:
        """One received group's sample statuses (labels: correct, wrong, ...)."""
        for label in labels:
            self.samples.labels(status=label).inc()

    def observe_book(self, book: RequestBook, timed_out: int = 0) -> None:
        """Outstanding requests, buffered groups, outcome counts, requests just released again after a timeout."""
        if timed_out:
            log.warning("%d requests timed out; released again under new ids", timed_out)
            self.requests_rereleased.inc(timed_out)
        self.unconsumed.set(book.outstanding)
        self.buffered.set(len(book.buffer))
        self.sync_outcomes(book.counts)

    def sync_outcomes(self, counts: collections.Counter[str]) -> None:
        """Bring ``winnow_learner_groups_total`` up to the book's outcome counts."""
        for outcome, total in counts.items():
            delta = total - self._exported[outcome]
            if delta > 0:
                self.group_outcomes.labels(outcome=str(outcome)).inc(delta)
                self._exported[outcome] = total

    def observe_step(self, r: StepResult, version: int, *, wait_s: float, compute_s: float, publish_s: float) -> None:
        """A finished step: every step metric with a Prometheus name (:func:`observe_metrics`), the step counter,
        version, phase times and the service's tokens per compute second."""
        m = r.metrics
        self.steps.inc()
        self.weight_version.set(version)
        self.observe_metrics(m)
        self.tokens_per_second.set(m["tokens"] / compute_s if compute_s > 0 else 0.0)
        self.phase.labels(phase="wait").observe(wait_s)
        self.phase.labels(phase="compute").observe(compute_s)
        self.phase.labels(phase="publish").observe(publish_s)
        self.last_step.set(time.time())
        log.info("step %d: loss %.4f acceptance %.2f kept groups %.2f tokens %d mismatch kl %.2e (wait %.2fs "
                 "compute %.2fs publish %.2fs)", version, m["loss"], m["acceptance_rate"], m["kept_group_fraction"],
                 int(m["tokens"]), m["mismatch_kl"], wait_s, compute_s, publish_s)

    def observe_metrics(self, metrics: Mapping[str, float]) -> None:
        """Set the gauges (increment the counters) of the step metrics in ``metrics`` that have a Prometheus name;
        keys a preset does not emit (the beta-sampler's) leave theirs untouched."""
        export_step(self.table, self._collectors, metrics)

    def observe_eval(self, label: str, accuracy: float, mean_at_k: float | None) -> dict[str, float]:
        """Export a held-out evaluation; returns its ``metrics.jsonl`` fields. ``accuracy`` may be an
        :class:`~winnow.learner.evaluate.EvalScores` (several named sets): each set is exported under its own
        ``set`` label, the first as ``eval_accuracy``/``eval_mean_at_k`` and, with several, every set as
        ``eval_accuracy.NAME``/``eval_mean_at_k.NAME`` too."""
        sets = getattr(accuracy, "sets", None) or {label: SimpleNamespace(accuracy=accuracy, mean_at_k=mean_at_k)}
        row: dict[str, float] = {}
        for i, (name, s) in enumerate(sets.items()):
            self.eval_accuracy.labels(set=name).set(float(s.accuracy))
            if s.mean_at_k is not None:
                self.eval_mean_at_k.labels(set=name).set(float(s.mean_at_k))
            for suffix in ([""] if i == 0 else []) + ([f".{name}"] if len(sets) > 1 else []):
                row[f"eval_accuracy{suffix}"] = float(s.accuracy)
                if s.mean_at_k is not None:
                    row[f"eval_mean_at_k{suffix}"] = float(s.mean_at_k)
        return row


def append_jsonl(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """One line of ``metrics.jsonl``; returns ``row``. A last line torn by a crash (no newline) is ended
    first, so it stays one bad line (readers skip it) instead of swallowing this row."""
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    with path.open("a+b") as f:
        if f.seek(0, 2) > 0:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
    return row
