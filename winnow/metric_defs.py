"""Metrics declared once: the row type of a service's metric table and everything driven by it.

A table (``tuple[Metric, ...]``; the learner's is :data:`winnow.learner.metric_table.LEARNER`) says per metric: its key
in ``metrics.jsonl``, its Prometheus name, kind, labels and help, how it combines over micro-batches and over
data-parallel ranks, its tracking-sink tag and its documentation. From it:

- :func:`register` creates the Prometheus collectors on a registry (one per Prometheus name);
- :func:`combine_micro_batches` merges the per-micro-batch metrics of one step;
- :func:`rank_vectors` / :func:`from_rank_vectors` reduce a step's metrics over ranks with two all-reduces
  (sum and max); :func:`reduce_over_ranks` is the same on a list of per-rank dicts (no process group);
- :func:`sink_tag` names a key in the tracking sinks (TensorBoard, W&B, MLflow, trackio);
- :func:`render_doc` writes the tables of ``docs/metrics.md`` (``scripts/metrics_doc.py --check`` finds a stale doc).

Nothing here imports a service. The generator's and the verifier's tables (``GENERATOR`` in
:mod:`winnow.generator.metrics`, ``VERIFIER`` in :mod:`winnow.verifier.service_metrics`) are made of ``source="service"``
rows (a Prometheus-only collector set by the service's code); :class:`TableMetrics` turns such a table into the
service's metrics object, and ``scripts/metrics_doc.py`` generates their sections of ``docs/metrics.md``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Kind = Literal["gauge", "counter", "histogram"]
Source = Literal["step", "row", "service"]
Micro = Literal["sum", "mean", "once"]
Ranks = Literal["sum", "mean", "max", "min", "same", "derived", "rank0"]


@dataclass(frozen=True)
class Metric:
    """One row of a metric table."""

    key: str
    """``source="step"``: the key in ``StepResult.metrics`` and ``metrics.jsonl``; ``"row"``: a ``metrics.jsonl``
    field the service adds; ``"service"``: the name of a Prometheus-only collector (an attribute of the service's
    metrics object)."""
    help: str
    """One line: the Prometheus HELP and the short meaning in the docs."""
    prom: str | None = None
    """The exposed Prometheus name (counters end in ``_total``); None: ``metrics.jsonl`` and the sinks only."""
    kind: Kind = "gauge"
    source: Source = "step"
    micro: Micro = "once"
    """Over the micro-batches of a step: ``sum`` (terms already divided by the whole batch's normaliser), ``mean``
    (weighted by ``weight`` of each micro-batch), ``once`` (computed once per step, not per micro-batch)."""
    ranks: Ranks = "rank0"
    """Over data-parallel ranks: ``sum``, ``mean`` (weighted by ``weight`` when set), ``max``, ``min``, ``same``
    (equal on every rank: their max), ``derived`` (recomputed from reduced keys by ``derive``), ``rank0`` (not
    reduced: only rank 0 has it)."""
    weight: str | None = None
    """The key that weights ``mean`` (over micro-batches and over ranks); it must reduce by ``sum``."""
    empty: float = 0.0
    """The value of a ``mean`` with zero total weight."""
    derive: Callable[[Mapping[str, float]], float] | None = None
    labels: tuple[str, ...] = ()
    """Label names of the collector (a ``service`` row)."""
    label_values: tuple[tuple[str, ...], ...] = ()
    """Label values created at start-up (so the series exist at 0)."""
    series: tuple[str, ...] = ()
    """A step row that sets one series of a labelled collector declared by a ``service`` row: its label values."""
    set_if: str | None = None
    """The gauge is set only when this key is > 0 (else it keeps the last value)."""
    buckets: tuple[float, ...] | None = None
    tag: Literal["train", "time", "eval"] = "train"
    """The tracking sinks' group: the key appears as ``<tag>/<key>`` (``eval`` drops the ``eval_`` prefix)."""
    doc: str = ""
    """The formula and details for ``docs/metrics.md`` (markdown; default: ``help``)."""
    section: str = ""
    """The docs table the Prometheus metric is listed in."""


Table = Sequence[Metric]


def by_key(table: Table) -> dict[str, Metric]:
    return {m.key: m for m in table}


def step_keys(table: Table) -> set[str]:
    """The keys a training step may emit."""
    return {m.key for m in table if m.source == "step"}


# -- Prometheus -------------------------------------------------------------------------------------------------

def register(table: Iterable[Metric], registry: Any) -> dict[str, Any]:
    """A collector on ``registry`` for each Prometheus name of ``table`` (``series`` rows use their service row's
    collector); returns ``{prom name: collector}``."""
    from prometheus_client import Counter, Gauge, Histogram

    out: dict[str, Any] = {}
    for m in table:
        if m.prom is None or m.series:
            continue
        kwargs: dict[str, Any] = {"labelnames": m.labels, "registry": registry}
        c: Counter | Gauge | Histogram
        if m.kind == "counter":
            c = Counter(m.prom, m.help, **kwargs)
        elif m.kind == "histogram":
            c = Histogram(m.prom, m.help, buckets=m.buckets or Histogram.DEFAULT_BUCKETS, **kwargs)
        else:
            c = Gauge(m.prom, m.help, **kwargs)
        for values in m.label_values:
            c.labels(*values)
        out[m.prom] = c
    return out


class TableMetrics:
    """A service's Prometheus collectors, built on ``registry`` from the class's ``table`` (one per Prometheus name:
    names, help, kinds, labels, buckets and pre-created label values are declared there). A collector is an
    attribute named by its row's key (``metrics.weight_version``); a key without a row is an ``AttributeError``."""

    table: ClassVar[Table] = ()

    def __init__(self, registry: Any) -> None:
        self._collectors = collectors = register(self.table, registry)  # by Prometheus name (for export_step)
        # plain attributes (no __getattr__ on the hot path); __getattr__ below only names the table on a miss
        self.__dict__.update({m.key: collectors[m.prom] for m in self.table if m.prom is not None and not m.series})

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{type(self).__name__} has no collector {name!r} (no row of its metric table)")


def export_step(table: Table, collectors: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Set the gauges (increment the counters) of the step rows present in ``metrics``."""
    for m in table:
        if m.source != "step" or m.prom is None or m.key not in metrics:
            continue
        if m.set_if is not None and not metrics.get(m.set_if, 0.0) > 0:
            continue
        c = collectors[m.prom]
        if m.series:
            c = c.labels(*m.series)
        if m.kind == "counter":
            c.inc(metrics[m.key])
        else:
            c.set(metrics[m.key])


# -- micro-batches and ranks ------------------------------------------------------------------------------------

def combine_micro_batches(table: Table, parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Every ``sum``/``mean`` micro-batch row over ``parts`` (one dict per micro-batch; none: the empty values).

    >>> t = (Metric("loss", "", micro="sum"), Metric("tokens", "", micro="sum"),
    ...      Metric("clip", "", micro="mean", weight="tokens"))
    >>> combine_micro_batches(t, [{"loss": 1.0, "tokens": 1.0, "clip": 0.5}, {"loss": 2.0, "tokens": 3.0, "clip": 0.1}])
    {'loss': 3.0, 'tokens': 4.0, 'clip': 0.2}
    """
    rows = by_key(table)
    for part in parts:
        if unknown := set(part) - {k for k, m in rows.items() if m.micro != "once"}:
            raise ValueError(f"micro-batch metrics without a micro-batch row in the metric table: {sorted(unknown)}")
    out: dict[str, float] = {}
    for m in table:
        if m.micro == "sum":
            out[m.key] = sum(p[m.key] for p in parts)
        elif m.micro == "mean":
            assert m.weight is not None
            total = sum(p[m.weight] for p in parts)
            out[m.key] = sum(p[m.key] * p[m.weight] for p in parts) / total if total > 0 else m.empty
    return out


def derive(table: Table, metrics: dict[str, float]) -> dict[str, float]:
    """Fill in the ``derived`` rows from the others (in place; returns ``metrics``)."""
    for m in table:
        if m.ranks == "derived" and m.derive is not None:
            metrics[m.key] = float(m.derive(metrics))
    return metrics


def rank_vectors(table: Table, metrics: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """``(keys, to_sum, to_max)``: this rank's contribution to the two all-reduces (sum and max) that reduce
    ``metrics`` over ranks. ``keys`` are every reducible step key of ``table``, the same on every rank whatever it
    emitted (a rank without a key, e.g. the beta-sampler's diagnostics on a rank whose groups hold no valid sample,
    must not make the ranks' vectors differ: a collective over vectors of different lengths fails or hangs).
    ``to_sum`` holds three blocks of ``len(keys)``: the value (``value * weight`` for a weighted mean), the weight
    (weighted means), and 1 if this rank has the key; ``to_max`` the value (``-value`` for a min), -inf where absent.
    So a key reduces over the ranks that have it, each weighted mean by its own weight on those ranks."""
    rows = by_key(table)
    if unknown := set(metrics) - step_keys(table):
        raise ValueError(f"metrics without a row in the metric table (no declared reduction): {sorted(unknown)}")
    if local := sorted(k for k in metrics if rows[k].ranks == "rank0"):
        raise ValueError(f"step metric {local[0]!r} has no reduction over ranks (ranks='rank0')")
    keys = sorted(m.key for m in table if m.source == "step" and m.ranks not in ("derived", "rank0"))
    values, weights, present, to_max = [], [], [], []
    for k in keys:
        m = rows[k]
        if k not in metrics:
            values.append(0.0)
            weights.append(0.0)
            present.append(0.0)
            to_max.append(-math.inf)
            continue
        v = float(metrics[k])
        w = float(metrics[m.weight]) if m.ranks == "mean" and m.weight else 1.0
        values.append(v * w)
        weights.append(w)
        present.append(1.0)
        to_max.append(-v if m.ranks == "min" else v)
    return keys, values + weights + present, to_max


def from_rank_vectors(table: Table, keys: Sequence[str], summed: Sequence[float], maxed: Sequence[float],
                      world: int) -> dict[str, float]:
    """The reduced metrics from the all-reduced vectors of :func:`rank_vectors` (then the derived rows): the keys at
    least one rank had. A plain mean divides by the number of ranks that have the key (at most ``world``)."""
    rows = by_key(table)
    n = len(keys)
    if len(summed) != 3 * n or len(maxed) != n:
        raise ValueError(f"reduced vectors of {len(summed)} and {len(maxed)} entries for {n} keys")
    out: dict[str, float] = {}
    for i, k in enumerate(keys):
        s, w, ranks, x = summed[i], summed[n + i], summed[2 * n + i], maxed[i]
        if ranks <= 0:
            continue
        m = rows[k]
        if m.ranks == "sum":
            out[k] = float(s)
        elif m.ranks == "mean" and m.weight:
            out[k] = float(s) / w if w > 0 else m.empty
        elif m.ranks == "mean":
            out[k] = float(s) / ranks
        elif m.ranks == "min":
            out[k] = -float(x)
        else:  # max, same
            out[k] = float(x)
    return derive(table, out)


def reduce_over_ranks(table: Table, per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The reduction of :func:`rank_vectors`/:func:`from_rank_vectors` over a list of per-rank metrics."""
    parts = [rank_vectors(table, m) for m in per_rank]
    keys = parts[0][0]
    summed = [sum(p[1][i] for p in parts) for i in range(len(parts[0][1]))]
    maxed = [max(p[2][i] for p in parts) for i in range(len(keys))]
    return from_rank_vectors(table, keys, summed, maxed, len(per_rank))


# -- tracking sinks ---------------------------------------------------------------------------------------------

def sink_tag(table: Table, key: str) -> str:
    """``<tag>/<key>`` of the key's row (``eval/accuracy`` for ``eval_accuracy``); a key without a row (an
    ``eval_accuracy.NAME`` of a named set, a future field) by its prefix: ``eval_`` -> eval, else train; a key
    with a ``/`` is its own tag."""
    m = by_key(table).get(key)
    if m is None and "/" in key:
        return key
    tag = m.tag if m is not None else ("eval" if key.startswith("eval_") else "train")
    return f"eval/{key.removeprefix('eval_')}" if tag == "eval" else f"{tag}/{key}"


# -- docs -------------------------------------------------------------------------------------------------------

_RANKS_DOC = {"sum": "sum", "max": "max", "min": "min", "same": "same on every rank", "derived": "recomputed",
              "rank0": "rank 0"}


def _reduction(m: Metric) -> tuple[str, str]:
    micro = {"sum": "sum", "mean": f"mean by `{m.weight}`", "once": "once per step"}[m.micro]
    if m.source != "step":
        return "", "rank 0 (the service)"
    ranks = f"mean by `{m.weight}`" if m.ranks == "mean" and m.weight else _RANKS_DOC.get(m.ranks, m.ranks)
    return micro, ranks


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_prometheus(table: Table, section: str) -> str:
    """The markdown table of the Prometheus metrics of ``section``: one line per name, its series rows folded in."""
    lines = ["| Metric | Type | Labels | Meaning and formula |", "|---|---|---|---|"]
    for m in table:
        if m.section != section or m.prom is None or m.series:
            continue
        meaning = m.doc or m.help
        if m.source == "step":
            meaning += f" (`{m.key}` in `metrics.jsonl`.)"
        for s in table:
            if s.series and s.prom == m.prom:
                sel = ", ".join(f"{n}=`{v}`" for n, v in zip(m.labels, s.series, strict=True))
                meaning += f" {sel} [`{s.key}`]: {s.doc or s.help}"
        labels = ", ".join(f"`{n}`" for n in m.labels)
        lines.append(f"| `{m.prom}` | {m.kind} | {labels} | {_cell(meaning)} |".replace("|  |", "| |"))
    return "\n".join(lines)


def render_keys(table: Table) -> str:
    """The markdown table of every ``metrics.jsonl`` key: sink tag, Prometheus series, reductions, meaning."""
    lines = ["| Key | Sinks | Prometheus | Over micro-batches | Over ranks | Meaning |", "|---|---|---|---|---|---|"]
    for m in table:
        if m.source == "service":
            continue
        prom = ""
        if m.prom is not None:
            labels = next((s.labels for s in table if s.source == "service" and s.prom == m.prom), ())
            sel = ",".join(f'{n}="{v}"' for n, v in zip(labels, m.series, strict=True))
            prom = f"`{m.prom}{{{sel}}}`" if sel else f"`{m.prom}`"
        micro, ranks = _reduction(m)
        lines.append(f"| `{m.key}` | `{sink_tag(table, m.key)}` | {prom} | {micro} | {ranks} | {_cell(m.help)} |")
    return "\n".join(lines)


def _fill(mo: re.Match[str], body: str) -> str:
    return f"{mo.group(1)}{body}\n{mo.group(2)}"


def render_doc(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with each generated block ``<!-- BEGIN generated NAME ... -->`` ... ``<!-- END generated NAME -->``
    replaced by ``blocks[NAME]``; a block missing from ``text`` is an error."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- BEGIN generated {re.escape(name)}(?::[^>]*)? -->\n).*?(<!-- END generated "
                             rf"{re.escape(name)} -->)", re.S)
        text, n = pattern.subn(functools.partial(_fill, body=body), text)
        if n != 1:
            raise ValueError(f"docs: no generated block {name!r}")
    return text
