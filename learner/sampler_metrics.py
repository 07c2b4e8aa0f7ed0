"""Prometheus gauges for the beta-sampler's batch metrics (``raft_beta``, ``raft++_beta``, ``raft_snis``).

The values come from :func:`winnow.learner.filters.sampler_diagnostics` through the step's metrics (the same
keys land in ``metrics.jsonl``); docs/metrics.md has the formulas. Two gauges carry a label so a dashboard can
draw the two sides of an identity on one panel:

- ``winnow_learner_beta_identity{side="is_weight_var"|"is_weight_gap"|"inverse_acceptance_minus_one"}``:
  ``Var_q[w] + E_q[w (w_max - w)] = 1/acceptance - 1`` (the first two from the rewards, the last from the
  measured acceptance),
- ``winnow_learner_beta_groups_accepted{source="measured"|"independent"}``: groups with an accepted sample
  against ``1 - (1 - p)^n``.

A batch without the metrics (another preset) leaves the gauges untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge


class BetaSamplerMetrics:
    """The beta-sampler's gauges on ``registry``; :meth:`observe` sets them from a step's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.acceptance = Gauge(
            "winnow_learner_beta_acceptance_ratio",
            "raft_beta: accepted / valid samples of the last batch (measured, and expected = mean alpha).",
            ["source"],
            registry=r,
        )
        self.identity = Gauge(
            "winnow_learner_beta_identity",
            "Var_q[w] + E_q[w (w_max - w)] = 1/acceptance - 1, both sides (last batch).",
            ["side"],
            registry=r,
        )
        self.ess = Gauge(
            "winnow_learner_snis_ess_ratio",
            "SNIS weights exp(r/beta) per group: ESS / group size, mean and min over groups (last batch).",
            ["stat"],
            registry=r,
        )
        self.groups = Gauge(
            "winnow_learner_beta_groups_accepted",
            "Groups with >= 1 accepted sample: measured vs 1 - (1 - p)^n (last batch).",
            ["source"],
            registry=r,
        )

    def observe(self, stats: Mapping[str, float]) -> None:
        if "beta_acceptance_rate" not in stats:
            return
        self.acceptance.labels(source="measured").set(stats["beta_acceptance_rate"])
        self.acceptance.labels(source="expected").set(stats["beta_acceptance_expected"])
        self.identity.labels(side="is_weight_var").set(stats["beta_is_weight_var"])
        self.identity.labels(side="is_weight_gap").set(stats["beta_is_weight_gap"])
        self.identity.labels(side="inverse_acceptance_minus_one").set(stats["beta_inverse_acceptance_minus_one"])
        self.ess.labels(stat="mean").set(stats["snis_ess_fraction"])
        self.ess.labels(stat="min").set(stats["snis_ess_min_fraction"])
        self.groups.labels(source="measured").set(stats["beta_groups_accepted"])
        self.groups.labels(source="independent").set(stats["beta_groups_accepted_independent"])
