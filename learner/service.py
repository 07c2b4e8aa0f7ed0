"""The learner service: the I/O shell around the request book and the trainer.

One loop, top to bottom (see docs/kafka.md for the delivery semantics):

    collect    -> release prompts (admission control, re-release after timeout) and read scored groups
                  into the book (decode, dedupe, check, buffer; stale, foreign, future and corrupt dropped)
    train      -> Trainer.train_step on batch_groups groups (in a worker thread: heartbeats go on)
    finish     -> each group's outcome (trained / all_correct / all_wrong) into the book
    publish    -> safetensors into the weight store, then a WeightAnnouncement (every k steps)
    checkpoint -> model + optimizer + the book's state (every k steps), THEN commit the offsets below
                  which every group is done

Every exactly-once decision is made by :class:`~winnow.learner.book.RequestBook` (pure, unit-tested);
this module only moves bytes between it, Kafka, the trainer and the disk. Metrics: ``winnow_learner_*``
(:mod:`winnow.learner.metrics`), one JSON line per step in ``<run_dir>/metrics.jsonl`` and the audit
trail ``<run_dir>/ledger.jsonl`` (:class:`~winnow.learner.checkpoint.Ledger`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from winnow.learner.batch import group_from_proto
from winnow.learner.book import Buffered, Outcome, Position, Release, RequestBook
from winnow.learner.checkpoint import (
    LearnerState,
    Ledger,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from winnow.learner.config import LearnerConfig
from winnow.learner.metrics import LearnerMetrics
from winnow.learner.weights import WeightPublisher

from winnow.kafka import (
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
from winnow.v1 import messages_pb2
from winnow.verdict import status_label

log = logging.getLogger(__name__)


class LearnerService:
    """Releases prompts, trains on scored groups, publishes weights, checkpoints, commits.

    ``trainer``: a :class:`winnow.learner.step.Trainer` built from the *initial* weights (a checkpoint,
    if any, is loaded into it by :meth:`run`). ``source``: the training :class:`~winnow.prompts.PromptSource`.
    ``evaluate``: optional ``callable(trainer) -> float`` (accuracy), run every ``eval.every`` steps.
    """

    def __init__(self, cfg: LearnerConfig, trainer: Any, source: Any, registry: CollectorRegistry, *,
                 evaluate: Any = None) -> None:
        self.cfg, self.trainer, self.source, self.evaluate = cfg, trainer, source, evaluate
        self.metrics = LearnerMetrics(registry)
        self.names = topics(cfg.kafka)
        self.book = self._new_book(LearnerState(run_id=uuid.uuid4().hex[:10]))
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(Path(cfg.run_dir) / "ledger.jsonl")
        self._jsonl = Path(cfg.run_dir) / "metrics.jsonl"
        self._stop = asyncio.Event()
        self._running = False
        self._consumer = self._producer = self._publisher = None
        self._checkpointed_version = -1
        self.steps_run = 0
        emb = getattr(trainer.model, "get_input_embeddings", lambda: None)()
        self._vocab_size = int(emb.weight.shape[0]) if emb is not None else None

    def _new_book(self, state: LearnerState) -> RequestBook:
        return RequestBook(batch_groups=self.cfg.batch_groups, max_staleness=int(self.trainer.algo.max_staleness),
                           request_timeout_s=self.cfg.request_timeout_s, dedupe_capacity=self.cfg.dedupe_capacity,
                           state=state, now=time.monotonic())

    def request_stop(self) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        return self._running and not self._stop.is_set()

    @property
    def version(self) -> int:
        return int(self.trainer.version)

    @property
    def state(self) -> LearnerState:
        return self.book.state

    @property
    def outcomes(self):
        return self.book.counts

    def _done(self) -> bool:
        return self._stop.is_set() or (self.cfg.max_steps is not None and self.version >= self.cfg.max_steps)

    def restore(self) -> bool:
        """Load the latest checkpoint (if resuming and one exists) into the trainer and the book."""
        path = latest_checkpoint(self.cfg.checkpoint.dir) if self.cfg.checkpoint.resume else None
        if path is None:
            self.ledger.truncate(0)
            return False
        trainer_state, state = load_checkpoint(path)
        self.trainer.load_state_dict(trainer_state)
        if int(state.version) != self.version:
            raise RuntimeError(f"checkpoint {path}: state.json version {state.version} != trainer version {self.version}")
        state.run_id = state.run_id or uuid.uuid4().hex[:10]
        self.book = self._new_book(state)
        self.ledger.truncate(self.version)  # rows of steps after the checkpoint will be redone
        self._checkpointed_version = self.version
        self.metrics.weight_version.set(self.version)
        log.info("resumed from %s: version %d, next position %d, %d outstanding requests, %d seen ids", path,
                 self.version, state.next_position, len(state.unconsumed), len(state.seen))
        return True

    async def run(self) -> int:
        """Run until stopped or ``max_steps``; returns the number of steps taken in this run."""
        cfg = self.cfg
        await ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
        resumed = await asyncio.to_thread(self.restore)
        self._producer = make_producer(cfg.kafka, client_id="winnow-learner")
        # A singleton: it assigns itself every partition of the groups topic instead of joining a consumer
        # group, so a restarted learner reads at once (group_id is still used to commit offsets).
        self._consumer = make_consumer(cfg.kafka, None, cfg.group_id, client_id="winnow-learner")
        dtype = None if cfg.weights.dtype == "auto" else cfg.weights.dtype
        self._publisher = WeightPublisher(cfg.weights.dir, self._producer, self.names.weights, keep=cfg.weights.keep,
                                          uri_root=cfg.weights.uri_root, dtype=dtype)
        await self._producer.start()
        try:
            await self._consumer.start()
            await self._assign_all()
            if self.version > 0:  # generators must follow the restored weights
                await self._publish()
            if resumed and cfg.rerelease_on_resume:
                await self._send(self.book.resume_releases())
            if self.version == 0 and self.evaluate is not None and cfg.eval.every:  # the baseline
                self._write_jsonl({"version": 0, "time": time.time(), **await self._evaluate()})
            self._running = True
            log.info("learner: version %d, batch %d groups x n=%d, max_staleness %d, consuming %s", self.version,
                     cfg.batch_groups, cfg.n, self.book.max_staleness, self.names.groups)
            while not self._done():
                await self._step()
            if self.version != self._checkpointed_version and self.steps_run:
                await self._checkpoint_and_commit()
        finally:
            self._running = False
            for client in (self._consumer, self._producer):
                try:
                    await client.stop()
                except Exception as e:  # shutting down: log and go on
                    log.warning("stopping a Kafka client failed: %s", e)
        return self.steps_run

    async def _assign_all(self) -> None:
        """Assign every partition of the groups topic and seek to the checkpointed offsets."""
        from aiokafka import TopicPartition

        deadline, parts = time.monotonic() + 30, None
        while not parts:
            await self._consumer.topics()  # refreshes metadata
            parts = self._consumer.partitions_for_topic(self.names.groups)
            if not parts and time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.names.groups} has no partitions (metadata timeout)")
            await asyncio.sleep(0 if parts else 0.2)
        self._consumer.assign([TopicPartition(self.names.groups, p) for p in sorted(parts)])
        for p, off in self.state.offsets.get(self.names.groups, {}).items():
            self._consumer.seek(TopicPartition(self.names.groups, int(p)), int(off))
            log.info("resuming %s[%s] at checkpointed offset %d", self.names.groups, p, off)

    # -- one step -------------------------------------------------------------------------------

    async def _step(self) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        batch = await self._collect()
        if batch is None:
            return
        t1, version_before = time.perf_counter(), self.version
        result = await asyncio.to_thread(self.trainer.train_step, [b.group for b in batch])
        t2 = time.perf_counter()
        for b, outcome in zip(batch, result.group_outcomes, strict=True):
            self.book.finish(b.request_id, b.prompt_id, b.where, outcome)
            self.metrics.staleness.observe(max(0, version_before - b.policy_version))
        self.metrics.sync_outcomes(self.book.counts)
        self.steps_run += 1
        last = cfg.max_steps is not None and self.version >= cfg.max_steps
        published = self.version % cfg.weights.publish_every == 0 or last
        if published:
            await self._publish()
        t3 = time.perf_counter()
        checkpointed = self.version % cfg.checkpoint.every == 0 or last
        if checkpointed:
            await self._checkpoint_and_commit()
        t4 = time.perf_counter()
        self.metrics.observe_step(result, self.version, wait_s=t1 - t0, compute_s=t2 - t1, publish_s=t3 - t2)
        log.info("step %d: loss %.4f acceptance %.2f kept groups %.2f tokens %d mismatch kl %.2e (wait %.2fs "
                 "compute %.2fs publish %.2fs)", self.version, result.loss, result.acceptance_rate,
                 result.kept_group_fraction, int(result.tokens), result.mismatch_kl, t1 - t0, t2 - t1, t3 - t2)
        evaluated = self.evaluate is not None and cfg.eval.every and self.version % cfg.eval.every == 0
        self._write_jsonl({
            "version": self.version, "time": time.time(), "wait_s": t1 - t0, "compute_s": t2 - t1,
            "publish_s": t3 - t2 if published else 0.0, "checkpoint_s": t4 - t3 if checkpointed else 0.0,
            "outcomes": {str(k): v for k, v in self.book.counts.items()},
            "batch_outcomes": {o: result.group_outcomes.count(o) for o in set(result.group_outcomes)},
            "unconsumed": self.book.outstanding, "next_position": self.state.next_position,
            **(await self._evaluate() if evaluated else {}), **result.metrics,
        })

    async def _evaluate(self) -> dict[str, float]:
        """Run the evaluator; export and return {"eval_accuracy"[, "eval_mean_at_k"]}."""
        label = self.cfg.eval.set_name
        row = {"eval_accuracy": float(await asyncio.to_thread(self.evaluate, self.trainer))}
        self.metrics.eval_accuracy.labels(set=label).set(row["eval_accuracy"])
        if (mean_at_k := getattr(self.evaluate, "last_mean_at_k", None)) is not None:
            row["eval_mean_at_k"] = float(mean_at_k)
            self.metrics.eval_mean_at_k.labels(set=label).set(row["eval_mean_at_k"])
        return row

    def _write_jsonl(self, row: dict[str, Any]) -> None:
        with self._jsonl.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    # -- prompts and groups -----------------------------------------------------------------------

    async def _collect(self) -> list[Buffered] | None:
        """Release and read until ``batch_groups`` fresh groups are buffered; None if stopped first."""
        while True:
            self.book.drop_stale(self.version)
            releases, timed_out = self.book.releases(time.monotonic(), more=not self._done())
            if timed_out:
                log.warning("%d requests timed out; released again under new ids", timed_out)
                self.metrics.requests_rereleased.inc(timed_out)
            await self._send(releases)  # first: slots freed by the last step keep the generators busy
            self.metrics.unconsumed.set(self.book.outstanding)
            batch = self.book.take_batch()
            self.metrics.buffered.set(len(self.book.buffer))
            self.metrics.sync_outcomes(self.book.counts)
            if batch is not None or self._done():
                return batch
            for records in (await self._consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    self._on_record(record)
            try:
                self.metrics.consumer_lag.set(await consumer_lag(self._consumer))
            except Exception as e:  # metric only
                log.debug("consumer lag unavailable: %s", e)

    async def _send(self, releases: list[Release]) -> None:
        futures = []
        for r in releases:
            problem = await asyncio.to_thread(self.source.get, r.position)
            s = self.cfg.sampling
            req = PromptRequest(
                prompt_id=problem.prompt_id, request_id=r.request_id, problem=problem.problem, gold=problem.gold,
                task=problem.task, n=self.cfg.n, release_version=self.version, released_at=time.time(),
                sampling=messages_pb2.SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                                     max_new_tokens=s.max_new_tokens, seed=s.seed or 0))
            futures.append(await send(self._producer, self.names.prompts, req, wait=False))
            self.metrics.prompts_released.inc()
        for fut in futures:
            await fut

    def _on_record(self, record: Any) -> None:
        where = Position(record.topic, record.partition, record.offset)
        self.book.track(where)
        msg = decode_record(ScoredGroup, record)
        if msg is None:
            self.book.done(where, Outcome.CORRUPT)
            return
        if self.book.duplicate(where, msg.request_id):
            return
        try:
            group = group_from_proto(msg, self.cfg.n, vocab_size=self._vocab_size,
                                     max_response_tokens=self.cfg.sampling.max_new_tokens)
        except ValueError as e:
            log.warning("dropping a corrupt group: %s", e)
            self.book.drop(where, msg.request_id, msg.prompt_id, Outcome.CORRUPT)
            return
        newest = max(v for s in group.samples for v in s.policy_versions)
        outcome = self.book.receive(where, group, group.prompt_id, group.policy_version, newest, self.version)
        if outcome is not None:
            log.warning("dropping group %s from %s: %s", msg.request_id, msg.generator_id or "?", outcome.value)
            return
        for s in group.samples:
            self.metrics.samples.labels(status=status_label(s.status)).inc()

    # -- weights and checkpoints ------------------------------------------------------------------

    async def _publish(self) -> None:
        await self._publisher.announce(await asyncio.to_thread(self._publisher.write, self.trainer))

    async def _checkpoint_and_commit(self) -> None:
        """Checkpoint, then commit the offsets below which every group is done (and so in the checkpoint)."""
        from aiokafka import TopicPartition

        t0 = time.perf_counter()
        state = self.book.state_for_checkpoint(self.version)
        await asyncio.to_thread(self.ledger.append, self.version, self.book.take_ledger_rows())
        await asyncio.to_thread(save_checkpoint, self.cfg.checkpoint.dir, self.trainer.state_dict(), state,
                                self.cfg.checkpoint.keep)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self._checkpointed_version = self.version
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        to_commit = self.book.to_commit(owned)
        if to_commit:
            await commit_offsets(self._consumer, {TopicPartition(t, p): off for (t, p), off in to_commit.items()})
            self.book.mark_committed(to_commit)
