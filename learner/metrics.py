"""The learner's Prometheus metrics (names relied on by the dashboard and alerts; see docs/metrics.md)."""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from winnow.learner.book import Outcome, RequestBook
from winnow.learner.sampler_metrics import BetaSamplerMetrics

if TYPE_CHECKING:
    from winnow.learner.step import StepResult

log = logging.getLogger("winnow.learner.service")


class LearnerMetrics:
    """The learner's Prometheus metrics (names are relied on by the dashboard)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.weight_version = Gauge(
            "winnow_learner_weight_version", "Policy version (optimizer steps taken).", registry=r
        )
        self.steps = Counter("winnow_learner_steps", "Optimizer steps taken by this process.", registry=r)
        self.acceptance_ratio = Gauge(
            "winnow_learner_acceptance_ratio", "Correct / valid samples in the last batch.", registry=r
        )
        self.kept_group_ratio = Gauge(
            "winnow_learner_kept_group_ratio", "Groups of the last batch with a kept sample / groups.", registry=r
        )
        self.groups = Counter("winnow_learner_groups", "Scored groups by outcome.", ["outcome"], registry=r)
        for o in Outcome:
            self.groups.labels(outcome=o.value)
        self._exported: collections.Counter[str] = collections.Counter()
        self.samples = Counter(
            "winnow_learner_samples", "Samples of batched groups by verifier status.", ["status"], registry=r
        )
        self.entropy = Gauge(
            "winnow_learner_entropy", "Mean token entropy of the policy (last step).", registry=r
        )
        self.kl = Gauge("winnow_learner_kl", "KL(pi || pi_ref) term (last step).", registry=r)
        self.clipped_token_ratio = Gauge(
            "winnow_learner_clipped_token_ratio", "Clipped tokens / trained tokens (last step).", registry=r
        )
        self.ratio_mean = Gauge(
            "winnow_learner_importance_ratio_mean",
            "Mean pi_theta/mu over trained tokens (last step).",
            registry=r,
        )
        self.ratio_max = Gauge(
            "winnow_learner_importance_ratio_max",
            "Max pi_theta/mu over trained tokens (last step).",
            registry=r,
        )
        self.ess = Gauge(
            "winnow_learner_effective_sample_size",
            "Normalised effective sample size of the importance ratios (last step).",
            registry=r,
        )
        self.mismatch_kl = Gauge(
            "winnow_learner_mismatch_kl",
            "Training-inference mismatch: mean k3 KL(mu || pi) over trained tokens sampled at the learner's "
            "own version (last step that had any).",
            registry=r,
        )
        self.mismatch_max_abs_log_ratio = Gauge(
            "winnow_learner_mismatch_max_abs_log_ratio",
            "Max |log pi - log mu| over trained tokens sampled at the learner's own version (last step that had any).",
            registry=r,
        )
        self.reward_mean = Gauge(
            "winnow_learner_reward_mean", "Mean reward over valid samples (last step).", registry=r
        )
        self.loss = Gauge("winnow_learner_loss", "Training loss (last step).", registry=r)
        self.staleness = Histogram(
            "winnow_learner_staleness_versions",
            "version - policy_version of each trained group.",
            buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32),
            registry=r,
        )
        self.tokens = Counter("winnow_learner_tokens", "Response tokens trained on.", registry=r)
        self.tokens_per_second = Gauge(
            "winnow_learner_tokens_per_second", "Trained tokens / compute seconds (last step).", registry=r
        )
        self.phase = Histogram(
            "winnow_learner_step_phase_seconds",
            "Seconds per step phase.",
            ["phase"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_step = Gauge(
            "winnow_learner_last_step_timestamp_seconds", "Unix time of the last optimizer step.", registry=r
        )
        self.prompts_released = Counter(
            "winnow_learner_prompts_released", "Prompt requests released (including re-releases).", registry=r
        )
        self.requests_rereleased = Counter(
            "winnow_learner_requests_rereleased",
            "Requests released again after request_timeout_s.",
            registry=r,
        )
        self.unconsumed = Gauge(
            "winnow_learner_requests_unconsumed", "Released requests not yet trained or dropped.", registry=r
        )
        self.buffered = Gauge(
            "winnow_learner_buffered_groups", "Groups received and waiting for a batch.", registry=r
        )
        self.consumer_lag = Gauge(
            "winnow_learner_consumer_lag",
            "Records behind the groups topic's high watermark (best effort).",
            registry=r,
        )
        self.eval_mean_at_k = Gauge(
            "winnow_learner_eval_mean_at_k", "Mean correctness of k samples per held-out problem.", ["set"],
            registry=r,
        )
        self.eval_accuracy = Gauge(
            "winnow_learner_eval_accuracy", "Accuracy on a held-out set.", ["set"], registry=r
        )
        self.dead_letters = Counter(
            "winnow_learner_dead_letters",
            "Scored-group records quarantined to <run_dir>/dead-letter.jsonl (undecodable, or invalid: "
            "wrong n, a status outside the enum, too many response tokens, ...).",
            ["reason"],
            registry=r,
        )
        for reason in ("undecodable", "invalid"):
            self.dead_letters.labels(reason=reason)
        self.beta_sampler = BetaSamplerMetrics(r)
        self.checkpoint_seconds = Histogram(
            "winnow_learner_checkpoint_seconds",
            "Seconds to write a checkpoint.",
            buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.keep_rate = Gauge(
            "winnow_learner_keep_rate",
            "Dynamic sampling: fraction of the recent groups the filter keeps, judged on arrival (4 x batch_groups).",
            registry=r,
        )
        self.samples_not_trained = Counter(
            "winnow_learner_samples_not_trained",
            "Dynamic sampling: samples generated and scored in groups the filter dropped on arrival.",
            registry=r,
        )
        self.offset_rewinds = Counter(
            "winnow_learner_offset_rewinds_total",
            "Groups-topic partitions read again from below the checkpointed offset because the broker's log ended "
            "below it (records lost: a memory-only broker restarted, a topic re-created).",
            registry=r,
        )
        self.run_finished = Gauge(
            "winnow_learner_run_finished", "1 once the run reached max_steps (completion marker written).", registry=r
        )

    def observe_samples(self, labels) -> None:
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
                self.groups.labels(outcome=str(outcome)).inc(delta)
                self._exported[outcome] = total

    def observe_step(self, r: StepResult, version: int, *, wait_s: float, compute_s: float, publish_s: float) -> None:
        self.steps.inc()
        self.weight_version.set(version)
        self.acceptance_ratio.set(r.acceptance_rate)
        self.kept_group_ratio.set(r.kept_group_fraction)
        self.entropy.set(r.entropy)
        self.kl.set(r.kl)
        self.clipped_token_ratio.set(r.clip_frac)
        self.ratio_mean.set(r.ratio_mean)
        self.ratio_max.set(r.ratio_max)
        self.ess.set(r.ess)
        self.reward_mean.set(r.reward_mean)
        if r.mismatch_tokens > 0:  # only tokens sampled at the version just trained from
            self.mismatch_kl.set(r.mismatch_kl)
            self.mismatch_max_abs_log_ratio.set(r.mismatch_max_abs_log_ratio)
        self.loss.set(r.loss)
        self.beta_sampler.observe(r.metrics)
        self.tokens.inc(r.tokens)
        self.tokens_per_second.set(r.tokens / compute_s if compute_s > 0 else 0.0)
        self.phase.labels(phase="wait").observe(wait_s)
        self.phase.labels(phase="compute").observe(compute_s)
        self.phase.labels(phase="publish").observe(publish_s)
        self.last_step.set(time.time())
        log.info("step %d: loss %.4f acceptance %.2f kept groups %.2f tokens %d mismatch kl %.2e (wait %.2fs "
                 "compute %.2fs publish %.2fs)", version, r.loss, r.acceptance_rate, r.kept_group_fraction,
                 int(r.tokens), r.mismatch_kl, wait_s, compute_s, publish_s)

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
