"""The generator's Prometheus metrics, declared once (names and help are part of the dashboard contract and
documented in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from winnow.generator.state import QUARANTINE_REASONS, REFUSAL_REASONS

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LONG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class GeneratorMetrics:
    """The generator's Prometheus metrics (names are part of the dashboard contract)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "winnow_generator_tokens_total", "Generated (response) tokens, EOS included.", registry=registry
        )
        self.groups_published = Counter(
            "winnow_generator_groups_published_total",
            "Scored groups acknowledged by Kafka.",
            registry=registry,
        )
        self.requests_in_flight = Gauge(
            "winnow_generator_requests_in_flight",
            "Prompt requests fetched but not yet published.",
            registry=registry,
        )
        self.weight_version = Gauge(
            "winnow_generator_weight_version", "Policy version of the loaded weights.", registry=registry
        )
        self.weight_reload_seconds = Histogram(
            "winnow_generator_weight_reload_seconds",
            "Seconds to verify and load a new weight version.",
            buckets=_LONG_BUCKETS,
            registry=registry,
        )
        self.weight_reload_failures = Counter(
            "winnow_generator_weight_reload_failures_total",
            "Weight announcements that could not be loaded (sha256 mismatch, missing file, wrong architecture).",
            registry=registry,
        )
        self.weight_reload_inplace = Gauge(
            "winnow_generator_weight_reload_inplace",
            "1: new weights are loaded into the running engine; 0: the engine is restarted for each version.",
            registry=registry,
        )
        self.weight_reload_fallback = Gauge(
            "winnow_generator_weight_reload_fallback",
            "1: in-place reload was wanted but refused at start-up (no in-place path, or its self-test gave wrong "
            "log-probs), so each version restarts the engine.",
            registry=registry,
        )
        self.weight_refusals = Counter(
            "winnow_generator_weight_refusals_total",
            "Weight announcements refused before any file was opened: location (not a file inside the weight "
            "store, or not a local path) or version (too far above the loaded one).",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.weight_refusals.labels(reason=reason)
        self.verifier_latency = Histogram(
            "winnow_generator_verifier_latency_seconds",
            "Seconds per verifier batch call (gRPC or in-process).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.verifier_errors = Counter(
            "winnow_generator_verifier_errors_total",
            "Failed verifier calls (each retry counts).",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "winnow_generator_consumer_lag",
            "Prompt requests behind the high watermark on this generator's partitions.",
            registry=registry,
        )
        self.generation_seconds = Histogram(
            "winnow_generator_generation_seconds",
            "Seconds per engine.generate call (one batch of prompts x n).",
            buckets=_LONG_BUCKETS,
            registry=registry,
        )
        self.corrupt_messages = Counter(
            "winnow_generator_corrupt_messages_total",
            "Records on the prompts or weights topic that did not decode (skipped).",
            registry=registry,
        )
        self.quarantined = Counter(
            "winnow_generator_quarantined_requests_total",
            "Prompt requests refused (sampling out of bounds, prompt too long, n above max_group_size, a group "
            "too large to publish or fields too large); skipped and committed, never retried by this generator.",
            ["reason"],
            registry=registry,
        )
        for reason in QUARANTINE_REASONS:
            self.quarantined.labels(reason=reason)
