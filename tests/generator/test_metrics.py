"""The generator's metrics (generator/metrics.py): the collectors built from the table ``GENERATOR`` expose exactly
the pinned names, types, labels and pre-created series (the dashboards' and alerts' contract; these were the
hand-written collectors' before the table), with the table's HELP; the service reaches only declared collectors."""

from __future__ import annotations

from pathlib import Path

from winnow.generator.metrics import GENERATOR, GeneratorMetrics

from ..metric_pins import check_declared_use, check_pinned

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


def test_exposed_names_types_labels_and_help_are_pinned():
    check_pinned(GeneratorMetrics, GENERATOR, PINNED)

def test_the_services_modules_use_only_declared_collectors():
    """Every ``metrics.NAME`` read by the generator's modules is a collector of the table (or a method)."""
    check_declared_use(GeneratorMetrics, ROOT / "generator", "metrics.py", {"weight_version", "quarantined", "tokens"}, "weight_versoin")
