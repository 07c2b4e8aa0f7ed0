"""Generate the metric tables in ``docs/metrics.md`` from the metric tables (rows of ``winnow/metric_defs.Metric``).

Each generated block sits between ``<!-- BEGIN generated NAME: ... -->`` and ``<!-- END generated NAME -->``; the
prose around the blocks is written by hand. Blocks: ``learner`` (the learner's Prometheus metrics), ``beta`` (the
beta-sampler's labelled gauges), ``keys`` (every ``metrics.jsonl`` key: sink name, Prometheus series, reduction over
micro-batches and ranks), all from ``learner/metric_table.py``; ``generator`` (from ``GENERATOR`` in
``generator/metrics.py``) and ``verifier`` (from ``VERIFIER`` in ``verifier/service_metrics.py``).

Usage: ``python scripts/metrics_doc.py`` rewrites the blocks; ``--check`` exits 1 if the doc is stale
(tests/learner/test_metric_table.py runs it). Run it after changing a row of a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "metrics.md"


def render(text: str) -> str:
    from winnow.generator.metrics import GENERATOR
    from winnow.learner.metric_table import LEARNER
    from winnow.metric_defs import render_doc, render_keys, render_prometheus
    from winnow.verifier.service_metrics import VERIFIER

    return render_doc(text, {"learner": render_prometheus(LEARNER, "learner"),
                             "beta": render_prometheus(LEARNER, "beta"), "keys": render_keys(LEARNER),
                             "generator": render_prometheus(GENERATOR, "generator"),
                             "verifier": render_prometheus(VERIFIER, "verifier")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/metrics.md is stale; write nothing")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/metrics_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
