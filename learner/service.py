"""The learner service: the controller of the pipeline.

One loop, top to bottom (see docs/kafka.md for the delivery semantics):

    release prompts  -> at most (max_staleness + 1) * batch_groups requests unconsumed (admission control)
    wait             -> consume scored groups: decode (corrupt: count, skip), dedupe by request_id,
                        buffer; drop groups more than max_staleness versions old (count)
    compute          -> Trainer.train_step on batch_groups groups (in a worker thread: heartbeats go on)
    publish          -> safetensors into the weight store, then a WeightAnnouncement (every k steps)
    checkpoint       -> model + optimizer + version + data position + unconsumed requests + dedupe
                        window + safe offsets (every k steps), THEN commit those offsets to Kafka

Exactly-once into training: a group is trained at most once because its request id enters the
dedupe window (saved in every checkpoint) when it is trained or dropped, and Kafka offsets are
committed only below groups that are done *and* checkpointed. After a crash the groups after the
last commit are re-read: the ones done before the checkpoint are duplicates, the rest are new
to the restored state. No group is lost: nothing is committed before it is done.

Prompts: the learner owns the data position. A released request that has not come back after
``request_timeout_s`` is released again under a new request id (the late one, if it ever comes,
is dropped as a duplicate). Requests released before a restart stay in the checkpoint as
"unconsumed"; on resume they are sent again under the same ids (``rerelease_on_resume``), so a
prompt lost with the broker is regenerated while a group already published is not trained twice.

Metrics: ``winnow_learner_*`` on the registry passed in (documented in docs/metrics.md), plus one
JSON line per step in ``<run_dir>/metrics.jsonl`` and the audit trail ``<run_dir>/ledger.jsonl``
(one row per finished group, see :class:`Ledger`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from winnow.learner.checkpoint import LearnerState, latest_checkpoint, load_checkpoint, save_checkpoint
from winnow.learner.config import LearnerConfig
from winnow.learner.sampler_metrics import BetaSamplerMetrics
from winnow.learner.weights import WeightPublisher

from winnow.kafka import (
    Deduper,
    OffsetTracker,
    PromptRequest,
    ScoredGroup,
    commit_offsets,
    consumer_lag,
    decode_record,
    ensure_topics,
    make_consumer,
    make_producer,
    send,
    topics,
)
from winnow.tracking import Tracker
from winnow.v1 import messages_pb2
from winnow.verdict import Status

log = logging.getLogger(__name__)

OUTCOMES = ("trained", "all_correct", "all_wrong", "stale", "duplicate", "corrupt")


class LearnerMetrics:
    """The learner's Prometheus metrics (names are relied on by the dashboard)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.weight_version = Gauge(
            "winnow_learner_weight_version", "Policy version (optimizer steps taken).", registry=r
        )
        self.steps = Counter("winnow_learner_steps", "Optimizer steps taken by this process.", registry=r)
        self.acceptance_rate = Gauge(
            "winnow_learner_acceptance_ratio", "Correct / valid samples in the last batch.", registry=r
        )
        self.kept_group_fraction = Gauge(
            "winnow_learner_kept_group_ratio", "Groups of the last batch with a kept sample / groups.", registry=r
        )
        self.groups = Counter("winnow_learner_groups", "Scored groups by outcome.", ["outcome"], registry=r)
        for o in OUTCOMES:
            self.groups.labels(outcome=o)
        self.samples = Counter(
            "winnow_learner_samples", "Samples of batched groups by verifier status.", ["status"], registry=r
        )
        self.entropy = Gauge(
            "winnow_learner_entropy", "Mean token entropy of the policy (last step).", registry=r
        )
        self.kl = Gauge("winnow_learner_kl", "KL(pi || pi_ref) term (last step).", registry=r)
        self.clip_fraction = Gauge(
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
        self.run_finished = Gauge(
            "winnow_learner_run_finished", "1 once the run reached max_steps (completion marker written).", registry=r
        )
        self.eval_accuracy = Gauge(
            "winnow_learner_eval_accuracy", "Accuracy on a held-out set.", ["set"], registry=r
        )
        self.beta_sampler = BetaSamplerMetrics(r)
        self.checkpoint_seconds = Histogram(
            "winnow_learner_checkpoint_seconds",
            "Seconds to write a checkpoint.",
            buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=r,
        )


@dataclass
class _Buffered:
    record: Any
    message: ScoredGroup
    group: Any  # GroupData


def group_data(msg: ScoredGroup, n: int, vocab_size: int | None = None):
    """``ScoredGroup`` -> :class:`winnow.learner.batch.GroupData`; ValueError naming the problem.

    Checks what the trainer relies on: ``n`` samples, a prompt, token ids in the vocabulary,
    finite non-positive behaviour log-probs, a policy version per token (the group's version is
    used for samples that carry none).
    """
    from winnow.learner.batch import GroupData, SampleData

    if len(msg.samples) != n:
        raise ValueError(f"group has {len(msg.samples)} samples, expected n={n}")
    if not msg.prompt_token_ids:
        raise ValueError("group has no prompt_token_ids")
    samples = []
    for i, s in enumerate(msg.samples):
        ids = list(s.response_token_ids)
        lps = list(s.behaviour_logprobs)
        all_ids = ids + list(msg.prompt_token_ids) if i == 0 else ids
        if any(t < 0 or (vocab_size is not None and t >= vocab_size) for t in all_ids):
            raise ValueError(f"sample {i}: token id outside the vocabulary [0, {vocab_size})")
        if any(not math.isfinite(x) or x > 1e-4 for x in lps):
            raise ValueError(f"sample {i}: behaviour_logprobs must be finite and <= 0")
        versions = list(s.policy_versions) or [int(msg.policy_version)]
        samples.append(
            SampleData(
                response_token_ids=ids,
                behaviour_logprobs=lps,
                policy_versions=versions,
                status=int(s.status),
                finish_reason=s.finish_reason or "stop",
            )
        )
    return GroupData(
        prompt_id=msg.prompt_id,
        request_id=msg.request_id,
        prompt_token_ids=list(msg.prompt_token_ids),
        samples=samples,
    )


def group_outcomes(groups: list, algo) -> list[str]:
    """Per trained group: "trained" if the algorithm's filter kept a sample of it, else
    "all_correct" / "all_wrong" (the groups rejection sampling drops)."""
    import torch
    from winnow.learner.algo import reward_from_status
    from winnow.learner.filters import group_stats, sample_keep_mask

    statuses = torch.tensor([[s.status for s in g.samples] for g in groups], dtype=torch.long)
    _, valid = reward_from_status(statuses, algo)
    correct = (statuses == int(Status.CORRECT)) & valid
    if algo.filter == "raft_beta":  # the same seeded draws as the step's (winnow.learner.filters.uniform_draws)
        from winnow.learner.objective import prepare_batch_signals

        keep = prepare_batch_signals(statuses, algo, request_ids=[g.request_id for g in groups])["keep"]
    else:
        keep = sample_keep_mask(correct, algo.filter, valid=valid)
    stats = group_stats(correct, valid=valid)
    out = []
    for gi in range(len(groups)):
        if bool(keep[gi].any()):
            out.append("trained")
        else:
            out.append("all_correct" if bool(stats["all_correct"][gi]) else "all_wrong")
    return out


def judge_samples(groups: list, algo):
    """Per sample of ``groups``: kept by the algorithm's filter, valid, reward (for the sample log)."""
    import torch
    from winnow.learner.algo import reward_from_status
    from winnow.learner.filters import sample_keep_mask

    from winnow.samples import SampleJudgement

    statuses = torch.tensor([[s.status for s in g.samples] for g in groups], dtype=torch.long)
    rewards, valid = reward_from_status(statuses, algo)
    keep = sample_keep_mask((statuses == int(Status.CORRECT)) & valid, algo.filter, valid=valid)
    return SampleJudgement(keep.tolist(), valid.tolist(), rewards.tolist(), str(algo.filter))


class LearnerService:
    """Releases prompts, trains on scored groups, publishes weights, checkpoints, commits.

    ``trainer``: a :class:`winnow.learner.step.Trainer` built from the *initial* weights (a
    checkpoint, if any, is loaded into it by :meth:`run`). ``source``: the training
    :class:`~winnow.prompts.PromptSource`. ``evaluate``: optional
    ``callable(trainer) -> float`` (accuracy), run in a thread every ``eval.every`` steps.
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        trainer: Any,
        source: Any,
        registry: CollectorRegistry,
        *,
        evaluate: Any = None,
    ) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.source = source
        self.metrics = LearnerMetrics(registry)
        self.evaluate = evaluate
        self.algo = trainer.algo
        self.max_staleness = int(self.algo.max_staleness)
        self.names = topics(cfg.kafka)
        self.state = LearnerState()
        self.dedupe = Deduper(cfg.dedupe_capacity)
        self.tracker = OffsetTracker()
        self.buffer: OrderedDict[str, _Buffered] = OrderedDict()
        self._released_at: dict[str, float] = {}
        self._resume_offsets: dict[Any, int] = {}
        self._stop = asyncio.Event()
        self._running = False
        self._last_progress = time.monotonic()
        self._last_checkpoint_version = -1
        self._consumer = None
        self._producer = None
        self._publisher: WeightPublisher | None = None
        self.steps_run = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._vocab_size = _vocab_size(trainer.model)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self._jsonl = Path(cfg.run_dir) / "metrics.jsonl"
        self.ledger = Ledger(Path(cfg.run_dir) / "ledger.jsonl")
        self._ledger_pending: list[dict[str, Any]] = []
        self.tracking = Tracker(cfg.tracking, cfg.run_dir, config=cfg.model_dump(mode="json"), registry=registry)

    # -- lifecycle ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        return self._running and not self._stop.is_set()

    @property
    def version(self) -> int:
        return int(self.trainer.version)

    def _done(self) -> bool:
        return self._stop.is_set() or (self.cfg.max_steps is not None and self.version >= self.cfg.max_steps)

    def restore(self) -> bool:
        """Load the latest checkpoint (if resuming and one exists); True if one was loaded."""
        path = latest_checkpoint(self.cfg.checkpoint.dir) if self.cfg.checkpoint.resume else None
        if path is None:
            self.state = LearnerState(run_id=uuid.uuid4().hex[:10])
            self.ledger.truncate(0)
            return False
        trainer_state, state = load_checkpoint(path)
        self.trainer.load_state_dict(trainer_state)
        if int(state.version) != self.version:
            raise RuntimeError(
                f"checkpoint {path}: state.json version {state.version} != trainer version {self.version}"
            )
        self.state = state
        self.ledger.truncate(self.version)  # rows of steps after the checkpoint will be redone
        state.run_id = state.run_id or uuid.uuid4().hex[:10]
        self.dedupe = Deduper.from_ids(state.seen, self.cfg.dedupe_capacity)
        now = time.monotonic()
        self._released_at = dict.fromkeys(state.unconsumed, now)
        from aiokafka import TopicPartition

        self._resume_offsets = {
            TopicPartition(t, int(p)): int(o) for t, parts in state.offsets.items() for p, o in parts.items()
        }
        self._last_checkpoint_version = self.version
        self.metrics.weight_version.set(self.version)
        log.info(
            "resumed from %s: version %d, next prompt position %d, %d unconsumed requests, %d seen ids",
            path,
            self.version,
            state.next_position,
            len(state.unconsumed),
            len(state.seen),
        )
        return True

    async def run(self) -> int:
        """Run until stopped or ``max_steps``; returns the number of steps taken in this run."""
        cfg = self.cfg
        await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
        resumed = await asyncio.to_thread(self.restore)
        producer = make_producer(cfg.kafka, client_id="winnow-learner")
        # The learner is a singleton: it assigns itself every partition of the groups topic
        # instead of joining a consumer group. A restarted learner then reads at once, without
        # waiting for the dead instance's session to expire (or, on brokers that never expire a
        # killed member, forever). group_id is still used to commit offsets.
        consumer = make_consumer(cfg.kafka, None, cfg.group_id, client_id="winnow-learner")
        self._producer, self._consumer = producer, consumer
        self._publisher = WeightPublisher(
            cfg.weights.dir,
            producer,
            self.names.weights,
            keep=cfg.weights.keep,
            uri_root=cfg.weights.uri_root,
            dtype=_dtype(cfg.weights.dtype),
        )
        await producer.start()
        try:
            await consumer.start()
            await self._assign_all(consumer)
            if self.version > 0:  # generators must follow the restored weights
                await self._publish()
            if resumed and cfg.rerelease_on_resume and self.state.unconsumed:
                await self._rerelease_unconsumed()
            if self.version == 0 and self.evaluate is not None and cfg.eval.every:  # the baseline
                row = await self._evaluate()
                self._write_jsonl({"version": 0, "time": time.time(), **row})
            self._running = True
            log.info(
                "learner: version %d, batch %d groups x n=%d, max_staleness %d, consuming %s",
                self.version,
                cfg.batch_groups,
                cfg.n,
                self.max_staleness,
                self.names.groups,
            )
            while not self._done():
                await self._step()
            if self.version != self._last_checkpoint_version and self.steps_run:
                await self._checkpoint_and_commit()
            if cfg.max_steps is not None and self.version >= cfg.max_steps:
                await self._finish_run()
        finally:
            self._running = False
            self.tracking.close()
            for client in (consumer, producer):
                try:
                    await client.stop()
                except Exception as e:  # shutting down: log and go on
                    log.warning("stopping a Kafka client failed: %s", e)
        return self.steps_run

    async def _assign_all(self, consumer) -> None:
        """Assign every partition of the groups topic to this learner and seek to the checkpoint."""
        from aiokafka import TopicPartition

        deadline = time.monotonic() + 30
        parts = None
        while not parts:
            await consumer.topics()  # refreshes metadata
            parts = consumer.partitions_for_topic(self.names.groups)
            if not parts:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {self.names.groups} has no partitions (metadata timeout)")
                await asyncio.sleep(0.2)
        tps = [TopicPartition(self.names.groups, p) for p in sorted(parts)]
        consumer.assign(tps)
        log.info("reading %s partitions %s", self.names.groups, sorted(parts))
        await self._on_assigned(tps)

    async def _on_assigned(self, partitions) -> None:
        for tp in partitions:
            off = self._resume_offsets.pop(tp, None)
            if off is not None:
                self._consumer.seek(tp, off)
                log.info("resuming %s[%d] at checkpointed offset %d", tp.topic, tp.partition, off)

    # -- one step -----------------------------------------------------------------------------

    async def _step(self) -> None:
        cfg, m = self.cfg, self.metrics
        t0 = time.perf_counter()
        batch = await self._collect()
        if batch is None:
            return
        t1 = time.perf_counter()
        version_before = self.version
        groups = [b.group for b in batch]
        stats = await asyncio.to_thread(self.trainer.train_step, groups)
        t2 = time.perf_counter()
        outcomes = group_outcomes(groups, self.algo)
        self.tracking.record_groups(
            [b.message for b in batch], outcomes, step=self.version, judged=judge_samples(groups, self.algo)
        )
        for b, outcome in zip(batch, outcomes, strict=True):
            self._finish(b.message.request_id, b.record, outcome, b.message.prompt_id)
            m.staleness.observe(max(0, version_before - b.group.policy_version))
        self.steps_run += 1
        last = cfg.max_steps is not None and self.version >= cfg.max_steps
        published = False
        if self.version % cfg.weights.publish_every == 0 or last:
            await self._publish()
            published = True
        t3 = time.perf_counter()
        checkpointed = False
        if self.version % cfg.checkpoint.every == 0 or last:
            await self._checkpoint_and_commit()
            checkpointed = True
        t4 = time.perf_counter()
        self._observe_step(stats, wait_s=t1 - t0, compute_s=t2 - t1, publish_s=t3 - t2)
        eval_row = {}
        if self.evaluate is not None and cfg.eval.every and self.version % cfg.eval.every == 0:
            eval_row = await self._evaluate()
        self._write_jsonl(
            {
                "version": self.version,
                "time": time.time(),
                "wait_s": t1 - t0,
                "compute_s": t2 - t1,
                "publish_s": t3 - t2 if published else 0.0,
                "checkpoint_s": t4 - t3 if checkpointed else 0.0,
                "outcomes": dict(self.outcomes),
                "batch_outcomes": {o: outcomes.count(o) for o in set(outcomes)},
                "unconsumed": len(self.state.unconsumed),
                "next_position": self.state.next_position,
                **eval_row,
                **{k: v for k, v in stats.items() if isinstance(v, int | float)},
            }
        )
        self._last_progress = time.monotonic()

    async def _evaluate(self) -> dict[str, float]:
        """Run the evaluator; export and return {"eval_accuracy"[, "eval_mean_at_k"]}."""
        label = self.cfg.eval.set_name
        row = {"eval_accuracy": float(await asyncio.to_thread(self.evaluate, self.trainer))}
        self.metrics.eval_accuracy.labels(set=label).set(row["eval_accuracy"])
        mean_at_k = getattr(self.evaluate, "last_mean_at_k", None)
        if mean_at_k is not None:
            row["eval_mean_at_k"] = float(mean_at_k)
            self.metrics.eval_mean_at_k.labels(set=label).set(row["eval_mean_at_k"])
        return row

    def _observe_step(
        self, stats: dict[str, float], *, wait_s: float, compute_s: float, publish_s: float
    ) -> None:
        m = self.metrics
        m.steps.inc()
        m.weight_version.set(self.version)
        m.acceptance_rate.set(stats.get("acceptance_rate", 0.0))
        m.kept_group_fraction.set(stats.get("kept_group_fraction", 0.0))
        m.entropy.set(stats.get("entropy", 0.0))
        m.kl.set(stats.get("kl", 0.0))
        m.clip_fraction.set(stats.get("clip_frac", 0.0))
        m.ratio_mean.set(stats.get("ratio_mean", 1.0))
        m.ratio_max.set(stats.get("ratio_max", 1.0))
        m.ess.set(stats.get("ess", 1.0))
        m.reward_mean.set(stats.get("reward_mean", 0.0))
        if stats.get("mismatch_tokens", 0.0) > 0:  # only tokens sampled at the version just trained from
            m.mismatch_kl.set(stats["mismatch_kl"])
            m.mismatch_max_abs_log_ratio.set(stats["mismatch_max_abs_log_ratio"])
        m.loss.set(stats.get("loss", 0.0))
        m.beta_sampler.observe(stats)
        tokens = float(stats.get("tokens", 0.0))
        m.tokens.inc(tokens)
        m.tokens_per_second.set(tokens / compute_s if compute_s > 0 else 0.0)
        m.phase.labels(phase="wait").observe(wait_s)
        m.phase.labels(phase="compute").observe(compute_s)
        m.phase.labels(phase="publish").observe(publish_s)
        m.last_step.set(time.time())
        log.info(
            "step %d: loss %.4f acceptance %.2f kept groups %.2f tokens %d (wait %.2fs compute %.2fs publish %.2fs)",
            self.version,
            stats.get("loss", 0.0),
            stats.get("acceptance_rate", 0.0),
            stats.get("kept_group_fraction", 0.0),
            int(tokens),
            wait_s,
            compute_s,
            publish_s,
        )

    def _write_jsonl(self, row: dict[str, Any]) -> None:
        with self._jsonl.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        self.tracking.log_row(row)

    # -- prompts ------------------------------------------------------------------------------

    @property
    def admission_limit(self) -> int:
        """Most requests unconsumed at once: (max_staleness + 1) batches."""
        return (self.max_staleness + 1) * self.cfg.batch_groups

    def _request(self, position: int, attempt: int) -> PromptRequest:
        problem = self.source.get(position)
        s = self.cfg.sampling
        return PromptRequest(
            prompt_id=problem.prompt_id,
            request_id=f"{self.state.run_id}-{position}-{attempt}",
            problem=problem.problem,
            gold=problem.gold,
            task=problem.task,
            messages=[messages_pb2.ChatMessage(role=r, content=c) for r, c in problem.messages or ()],
            n=self.cfg.n,
            release_version=self.version,
            sampling=messages_pb2.SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                max_new_tokens=s.max_new_tokens,
                seed=s.seed or 0,
            ),
            released_at=time.time(),
        )

    async def _release(self) -> None:
        """Top the unconsumed requests up to the admission limit, then re-release timed-out ones."""
        futures = []
        while len(self.state.unconsumed) < self.admission_limit and not self._done():
            pos = self.state.next_position
            self.state.next_position += 1
            futures.append(await self._send_request(pos, 0))
        now = time.monotonic()
        for rid, pos in list(self.state.unconsumed.items()):
            if rid in self.buffer or now - self._released_at.get(rid, now) < self.cfg.request_timeout_s:
                continue
            del self.state.unconsumed[rid]
            self._released_at.pop(rid, None)
            self.dedupe.add(rid)  # the late group, if it comes, is a duplicate of the re-release
            attempt = self.state.attempts.get(str(pos), 0) + 1
            log.warning(
                "request %s (position %d) timed out; releasing it again (attempt %d)", rid, pos, attempt
            )
            self.metrics.requests_rereleased.inc()
            futures.append(await self._send_request(pos, attempt))
        for fut in futures:
            if fut is not None:
                await fut
        self.metrics.unconsumed.set(len(self.state.unconsumed))

    async def _rerelease_unconsumed(self) -> None:
        """Send every unconsumed request of the restored state again, under its own request id."""
        futures = []
        for rid, pos in list(self.state.unconsumed.items()):
            attempt = self.state.attempts.get(str(pos), 0)
            if rid.endswith(f"-{pos}-{attempt}"):
                futures.append(await self._send_request(pos, attempt))
        for fut in futures:
            if fut is not None:
                await fut
        log.info("released %d unconsumed requests of the checkpoint again (same request ids)", len(futures))

    async def _send_request(self, position: int, attempt: int):
        """Release the request for ``position``; None if no send was needed.

        Request ids are deterministic (``<run>-<position>-<attempt>``), so after a crash the
        positions released after the last checkpoint get the same ids again: one already done is
        skipped, one already buffered is not sent twice, and a second group for it is a duplicate.
        """
        req = await asyncio.to_thread(self._request, position, attempt)
        rid = req.request_id
        if attempt:
            self.state.attempts[str(position)] = attempt
        if rid in self.dedupe:
            return None
        self.state.unconsumed[rid] = position
        self._released_at[rid] = time.monotonic()
        if rid in self.buffer:
            return None
        self.state.prompts_released += 1
        self.metrics.prompts_released.inc()
        return await send(self._producer, self.names.prompts, req, wait=False)

    # -- groups -------------------------------------------------------------------------------

    async def _collect(self) -> list[_Buffered] | None:
        """Wait until ``batch_groups`` fresh groups are buffered; None if stopped first."""
        while True:
            self._drop_stale()
            await self._release()  # first: slots freed by the last step keep the generators busy
            if len(self.buffer) >= self.cfg.batch_groups:
                batch = [self.buffer.popitem(last=False)[1] for _ in range(self.cfg.batch_groups)]
                self.metrics.buffered.set(len(self.buffer))
                return batch
            if self._done():
                return None
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._on_record(record)
            self.metrics.buffered.set(len(self.buffer))
            try:
                self.metrics.consumer_lag.set(await consumer_lag(self._consumer))
            except Exception as e:  # metric only
                log.debug("consumer lag unavailable: %s", e)

    def _on_record(self, record: Any) -> None:
        self.tracker.track(record)
        msg = decode_record(ScoredGroup, record, self._on_corrupt)
        if msg is None:
            self._count("corrupt")
            self.tracker.done(record)
            return
        rid = msg.request_id
        if rid in self.dedupe or rid in self.buffer:
            if rid not in self.buffer:  # done before: a re-release of it needs no slot
                self.state.unconsumed.pop(rid, None)
                self._released_at.pop(rid, None)
            self._count("duplicate")
            self.tracker.done(record)
            return
        try:
            group = group_data(msg, self.cfg.n, self._vocab_size)
        except ValueError as e:
            log.warning("dropping group %s from %s: %s", rid, msg.generator_id or "?", e)
            self._finish(rid, record, "corrupt", msg.prompt_id)
            return
        if rid not in self.state.unconsumed:
            log.debug(
                "group %s was not released by this learner (run %s); training on it anyway",
                rid,
                self.state.run_id,
            )
        self.buffer[rid] = _Buffered(record, msg, group)
        for s in group.samples:
            self.metrics.samples.labels(status=_status_label(s.status)).inc()

    def _drop_stale(self) -> None:
        for rid, b in list(self.buffer.items()):
            if self.version - b.group.policy_version > self.max_staleness:
                del self.buffer[rid]
                self._finish(rid, b.record, "stale", b.message.prompt_id)
                self.tracking.record_groups(
                    [b.message], ["stale"], step=self.version + 1, judged=judge_samples([b.group], self.algo)
                )

    def _finish(self, rid: str, record: Any, outcome: str, prompt_id: str = "") -> None:
        """The group ``rid`` is done (trained or dropped): remember it, free its slot, mark its offset."""
        self.dedupe.add(rid)
        self._ledger_pending.append({"request_id": rid, "prompt_id": prompt_id, "outcome": outcome})
        position = self.state.unconsumed.pop(rid, None)
        if position is not None:
            self.state.attempts.pop(str(position), None)
        self._released_at.pop(rid, None)
        self.tracker.done(record)
        self._count(outcome)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.metrics.groups.labels(outcome=outcome).inc()

    def _on_corrupt(self, reason: str, record: Any) -> None:
        pass  # counted as outcome="corrupt" by the caller

    # -- weights and checkpoints --------------------------------------------------------------

    async def _publish(self) -> None:
        ann = await asyncio.to_thread(self._publisher.write, self.trainer)
        await self._publisher.announce(ann)

    async def _finish_run(self) -> None:
        """max_steps reached (and checkpointed): write the completion marker, then announce the final
        weights once more with ``final=true`` so generators stop asking for prompts (learner/completion.py)."""
        from winnow.learner.completion import write_marker

        path = write_marker(self.cfg.run_dir, version=self.version, max_steps=self.cfg.max_steps,
                            run_id=self.state.run_id or "")
        self.metrics.run_finished.set(1)
        last = self._publisher.last if self._publisher is not None else None
        if last is not None:
            final = type(last)()
            final.CopyFrom(last)
            final.final = True
            await self._publisher.announce(final)
        log.info("run finished at version %d: wrote %s%s", self.version, path,
                 ", announced final weights" if last is not None else "")

    async def _checkpoint_and_commit(self) -> None:
        """Checkpoint, then commit the offsets below which every group is done (and so in the checkpoint)."""
        to_commit = self.tracker.to_commit()
        state = self.state
        state.version = self.version
        state.seen = self.dedupe.ids()
        state.offsets = {}
        for tp, off in self.tracker.committable().items():
            state.offsets.setdefault(tp.topic, {})[str(tp.partition)] = off
        # buffered groups are not done: they stay in state.unconsumed and above the committed offsets
        t0 = time.perf_counter()
        await asyncio.to_thread(self.ledger.append, self.version, self._ledger_pending)
        self._ledger_pending = []
        await asyncio.to_thread(
            save_checkpoint,
            self.cfg.checkpoint.dir,
            self.trainer.state_dict(),
            state,
            self.cfg.checkpoint.keep,
        )
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self._last_checkpoint_version = self.version
        owned = self._consumer.assignment()
        to_commit = {tp: off for tp, off in to_commit.items() if tp in owned}
        if to_commit:
            await commit_offsets(self._consumer, to_commit)
            self.tracker.mark_committed(to_commit)


class Ledger:
    """``<run_dir>/ledger.jsonl``: one row per scored group the learner finished (trained or
    dropped), ``{"version", "request_id", "prompt_id", "outcome"}``, where ``version`` is the
    checkpoint that holds it.

    Rows are appended just before the checkpoint that makes them durable; on restore the rows of
    later versions (work that is redone) are cut, so the file is exactly the checkpointed history:
    each request id appears once. It is the audit trail for "no group lost, none trained twice".
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, version: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"version": version, **row}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, version: int) -> None:
        """Keep only the rows of checkpoints up to ``version``."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a crash
                continue
            if int(row.get("version", 0)) <= version:
                keep.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _vocab_size(model: Any) -> int | None:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:  # not a HF model: skip the vocabulary check
        return None


def _status_label(status: int) -> str:
    try:
        return Status(int(status)).label
    except ValueError:
        return "unknown"


def _dtype(name: str):
    if name == "auto":
        return None
    from winnow.numerics import torch_dtype

    return torch_dtype(name)


def build_trainer(cfg: LearnerConfig):
    """Load the initial policy named by ``cfg.model`` and build the Trainer (imports torch).

    The forward/backward runs at ``numerics.precision``: autocast to it when the master weights are
    in another dtype (fp32 on CPU), none when they already are in it.
    """
    import torch
    from winnow.learner.model import load_causal_lm, resolve_device
    from winnow.learner.step import Trainer

    from winnow.models import resolve_model
    from winnow.numerics import resolve_precision, torch_dtype

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    compute = torch_dtype(resolve_precision(cfg.numerics.precision, device.type))
    dtype = cfg.dtype
    if dtype == "auto" and compute == torch.float32:
        dtype = "float32"  # bf16 parameters cannot compute in fp32
    model, tokenizer = load_causal_lm(resolve_model(cfg.model), dtype=dtype, device=device)
    param_dtype = next(model.parameters()).dtype
    if param_dtype != compute and param_dtype != torch.float32:
        raise ValueError(
            f"learner.dtype {cfg.dtype} ({param_dtype}) cannot compute at numerics.precision "
            f"{cfg.numerics.precision} ({compute}); use learner.dtype: float32"
        )
    temperature = cfg.sampling.temperature
    if temperature <= 0:
        log.warning("sampling.temperature=0 (greedy) gives no policy gradient signal; the learner uses 1.0")
        temperature = 1.0
    trainer = Trainer(
        model,
        cfg.algo_config(),
        cfg.optim_config(),
        pad_token_id=tokenizer.pad_token_id,
        temperature=temperature,
        autocast_dtype=compute if compute != param_dtype else None,
    )
    return trainer, tokenizer
