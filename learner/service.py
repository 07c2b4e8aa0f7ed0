"""The learner service: the I/O shell around the request book and the trainer. One loop (docs/kafka.md):

    collect    -> release prompts (admission control, re-release after timeout) and read scored groups
                  into the book (decode, dedupe, check, buffer; stale, foreign, future and corrupt dropped)
    train      -> Trainer.train_step on batch_groups groups (in a worker thread: heartbeats go on)
    finish     -> each group's outcome (trained / all_correct / all_wrong) into the book
    publish    -> safetensors into the weight store, then a WeightAnnouncement (every k steps)
    checkpoint -> model + optimizer + the book's state (every k steps), THEN commit the offsets below
                  which every group is done

Every exactly-once decision is made by :class:`~winnow.learner.book.RequestBook` (pure, unit-tested); this
module moves bytes between it, Kafka, the trainer and the disk. Metrics: :mod:`winnow.learner.metrics`, one
JSON line per step in ``<run_dir>/metrics.jsonl``, the audit trail ``<run_dir>/ledger.jsonl``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from winnow import compute_thread, kafka
from winnow.groups import ShapeMismatch
from winnow.learner import checkpoint, faults
from winnow.learner.batch import GroupData, group_from_proto, vocab_size
from winnow.learner.book import Buffered, Outcome, Position, Release, RequestBook
from winnow.learner.checkpoint import DeadLetters, LearnerState, Ledger
from winnow.learner.completion import finish_run
from winnow.learner.config import LearnerConfig
from winnow.learner.metrics import LearnerMetrics, append_jsonl
from winnow.learner.objective import judge_samples
from winnow.learner.tracking import Tracker
from winnow.learner.weights import WeightPublisher
from winnow.sampling import prompt_request
from winnow.verdict import Status, status_label

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
    from transformers import PreTrainedTokenizerBase

    from winnow.learner.evaluate import Evaluate
    from winnow.learner.step import ServiceTrainer
    from winnow.prompts import Problem, ProblemSource
    from winnow.v1 import messages_pb2

log = logging.getLogger(__name__)

BROKER_CHECK_S = 10.0
"""With requests outstanding and no group for this long, check that the broker still has the pipeline's topics."""


if TYPE_CHECKING:  # every trainer the learner builds is a ServiceTrainer (mypy fails here otherwise)
    from winnow.learner.distributed import ShardedTrainer
    from winnow.learner.lora import LoraTrainer
    from winnow.learner.step import Trainer

    _PLAIN: type[ServiceTrainer] = Trainer
    _LORA: type[ServiceTrainer] = LoraTrainer
    _SHARDED: type[ServiceTrainer] = ShardedTrainer


_C = TypeVar("_C")


def _made(client: _C | None) -> _C:
    """A Kafka client or the publisher: :meth:`LearnerService.run` makes them, the methods that use one run inside it."""
    assert client is not None, "made by LearnerService.run()"
    return client


class LearnerService:
    """Releases prompts, trains, publishes, checkpoints, commits. ``trainer``: a :class:`ServiceTrainer` from the
    *initial* weights (:meth:`run` loads a checkpoint into it); ``source``: a :class:`~winnow.prompts.ProblemSource`
    (a :class:`~winnow.prompts.PromptSource`); ``evaluate``: optional :class:`~winnow.learner.evaluate.Evaluate`
    (``evaluate(trainer.eval_view()) -> accuracy``), run every ``eval.every`` steps."""

    def __init__(self, cfg: LearnerConfig, trainer: ServiceTrainer, source: ProblemSource,
                 registry: CollectorRegistry, *, evaluate: Evaluate | None = None,
                 prompt_tokens: Callable[[Problem], int] | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.cfg, self.trainer, self.source, self.evaluate = cfg, trainer, source, evaluate
        self.prompt_tokens = prompt_tokens  # problem -> prompt tokens as the generators format it (None: no check)
        self.tokenizer = tokenizer  # saved next to published weights (HF folders); optional
        self.metrics = LearnerMetrics(registry)
        self.names = kafka.topics(cfg.kafka)
        self.book = self._new_book(LearnerState(run_id=uuid.uuid4().hex[:10]))
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self.ledger, self._jsonl = Ledger(Path(cfg.run_dir) / "ledger.jsonl"), Path(cfg.run_dir) / "metrics.jsonl"
        self.dead_letters = DeadLetters(Path(cfg.run_dir) / "dead-letter.jsonl", self.metrics.dead_letters)
        self._stop, self._running, self._checkpointed_version, self.steps_run = asyncio.Event(), False, -1, 0
        self._last_record = time.monotonic()  # when a groups record last arrived (the broker check)
        self._recovering = False  # a lost broker noticed, its recovery not complete yet
        self._last_check = time.monotonic()  # when the broker check last ran
        self._recovery_counted = False  # its recovery counted in offset_rewinds
        self._consumer: AIOKafkaConsumer | None = None  # the Kafka clients and the publisher: made by run()
        self._producer: AIOKafkaProducer | None = None
        self._publisher: WeightPublisher | None = None
        self.tracking = Tracker(cfg.tracking, cfg.run_dir, config=cfg.model_dump(mode="json", exclude={"kafka"}),
                                registry=registry)  # no Kafka addresses or credentials to the sinks
        self._vocab_size = vocab_size(trainer.model)
        self._group_key = kafka.group_hmac_key(cfg.kafka)  # None: groups are not authenticated

    def _new_book(self, state: LearnerState) -> RequestBook:
        algo = self.trainer.algo
        return RequestBook(batch_groups=self.cfg.batch_groups, max_staleness=int(algo.max_staleness),
                           request_timeout_s=self.cfg.request_timeout_s, dedupe_capacity=self.cfg.dedupe_capacity,
                           state=state, now=time.monotonic(),
                           max_oversample=algo.max_prompts_per_group if algo.dynamic else 1.0)

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
        """Continue the lineage of the run directory, or say exactly why not.

        With ``checkpoint.resume`` and a complete checkpoint (``LATEST``'s, else the newest complete one), load
        it into the trainer and the book, and move the ledger and metrics rows of later versions (redone now)
        to ``*.discarded.jsonl``. With no checkpoint yet (a crash before the first), continue at version 0
        under the same run id (``<checkpoint.dir>/RUN_ID``). A ledger with rows but no checkpoint to match
        is an error: those groups were trained and their state is gone. ``resume: false`` starts a new
        lineage; the old rows move to the discarded files, nothing is deleted."""
        cfg = self.cfg
        path = checkpoint.latest_checkpoint(cfg.checkpoint.dir) if cfg.checkpoint.resume else None
        run_id_file = Path(cfg.checkpoint.dir) / "RUN_ID"
        if path is None:
            versions = {int(r.get("version", 0)) for r in self.ledger.rows()} if cfg.checkpoint.resume else set()
            if len(versions) > 1:  # rows of two checkpoints: one of them completed, and is gone now
                raise RuntimeError(
                    f"{self.ledger.path} holds groups of checkpoints {min(versions)}..{max(versions)} but "
                    f"{cfg.checkpoint.dir} has no complete checkpoint: the checkpoints were removed. Restore the "
                    "checkpoint folder, or start a new run with learner.checkpoint.resume=false (the old rows are "
                    "kept in ledger.discarded.jsonl).")
            # one version: the first checkpoint was torn (rows are appended just before it): they are redone
            run_id = run_id_file.read_text().strip() if cfg.checkpoint.resume and run_id_file.is_file() else ""
            if run_id:
                log.info("no checkpoint yet in %s: continuing run %s at version 0", cfg.checkpoint.dir, run_id)
            else:
                run_id = self.book.state.run_id
                Path(cfg.checkpoint.dir).mkdir(parents=True, exist_ok=True)
                tmp = run_id_file.with_name(".RUN_ID.tmp")
                tmp.write_text(run_id + "\n")
                tmp.replace(run_id_file)
            self.book = self._new_book(LearnerState(run_id=run_id))
            self.ledger.truncate(-1)
            checkpoint.discard_rows_after(self._jsonl, -1)
            return False
        state = self.trainer.read_checkpoint(path)
        if int(state.version) != self.version:
            raise RuntimeError(f"checkpoint {path}: state.json version {state.version} != trainer version {self.version}")
        state.run_id = state.run_id or uuid.uuid4().hex[:10]
        self.book = self._new_book(state)
        self.ledger.truncate(self.version)  # rows of steps after the checkpoint will be redone
        checkpoint.discard_rows_after(self._jsonl, self.version)
        self._checkpointed_version = self.version
        log.info("resumed from %s at version %d: %d outstanding requests", path, self.version, len(state.unconsumed))
        return True

    def _store_has_versions(self) -> bool:
        """Weights were published into the store before (by a lineage that may be dead)."""
        store = Path(self.cfg.weights.dir)
        return store.is_dir() and any(p.name.startswith("v") and p.is_dir() for p in store.iterdir())

    async def _check_broker(self) -> None:
        """No group for ``BROKER_CHECK_S`` with requests outstanding: has the broker lost its topics (a memory-only
        broker restarted under the running learner)? Then the prompt requests in flight are gone with it and would
        wait for ``request_timeout_s``: re-create the topics, read the groups topic from its new start, release every
        outstanding request again (same ids: a group that still comes is deduplicated) and announce the weights
        again, and say so. Topic metadata decides, not end offsets (a broker may report those low)."""
        try:
            present = await _made(self._consumer).topics()  # the broker's topics now (not the consumer's cached view)
        except KafkaError as e:  # the broker is down (restarting): the next check tries again
            log.warning("broker check: no metadata (%s); retrying in %.0f s", e, BROKER_CHECK_S)
            return
        missing = [t for t in (self.names.groups, self.names.weights) if t not in present]
        if not missing and not self._recovering:
            return
        log.warning("the broker lost topic(s) %s under the running learner (a memory-only broker restarted?): "
                    "re-creating them, releasing %d outstanding requests again and re-announcing v%d",
                    ", ".join(missing) or "(recovery retried)", self.book.outstanding, self.version)
        if not self._recovery_counted:  # once per lost broker, however many tries the recovery takes
            self.metrics.offset_rewinds.inc()
            self._recovery_counted = True
        self._recovering = True  # until every step below went through (a broker just back may refuse some)
        try:
            await kafka.ensure_topics(self.cfg.kafka, partitions=self.cfg.kafka_partitions)
            consumer = _made(self._consumer)
            await kafka.assign_all_partitions(consumer, self.names.groups, {})
            for tp in consumer.assignment():
                consumer.seek(tp, 0)
                self.book.rewind((tp.topic, tp.partition), 0)
            await self._send(self.book.resume_releases())
            if self.version > 0 or self._store_has_versions():
                await self._publish()
        except (KafkaError, RuntimeError) as e:
            log.warning("broker check: recovering failed (%s); retrying in %.0f s", e, BROKER_CHECK_S)
            return
        self._recovering = self._recovery_counted = False

    async def _reconcile_offsets(self) -> None:
        """A checkpointed groups-topic offset beyond the partition's end means the broker lost records (a
        memory-only broker restarted, a topic re-created): read from the end instead of waiting forever above
        it, and say so. Re-reading is safe (dedupe, outstanding ids); skipping is not, so only ever go back."""
        saved = self.book.state.offsets.get(self.names.groups, {})
        if not saved:
            return
        consumer = _made(self._consumer)
        tps = [TopicPartition(self.names.groups, int(p)) for p in saved]
        ends = await consumer.end_offsets(tps)
        for tp, end in ends.items():
            want = int(saved[str(tp.partition)])
            if end < want:
                log.warning("%s[%d] ends at offset %d, below the checkpoint's %d: the broker lost records (a memory-"
                            "only broker restarted?); reading from %d. Groups of outstanding requests come again "
                            "after their re-release.", tp.topic, tp.partition, end, want, end)
                consumer.seek(tp, end)
                self.book.rewind((tp.topic, tp.partition), end)
                self.metrics.offset_rewinds.inc()

    async def run(self) -> int:
        """Run until stopped or ``max_steps``; returns the number of steps taken in this run. Holds the checkpoint
        directory's lock (:meth:`_lock_lineage`) throughout."""
        lock = self._lock_lineage()
        try:
            return await self._run()
        finally:
            lock.close()

    def _lock_lineage(self) -> Any:
        """One learner per checkpoint directory (``<checkpoint.dir>/.learner.lock``): a second one would release the
        same request ids and train the same groups in two interleaved lineages."""
        from winnow.runlock import hold_lock

        d = Path(self.cfg.checkpoint.dir)
        return hold_lock(d, name=".learner.lock",
                         busy=f"learner.checkpoint.dir {d} is in use by another learner (pid {{pid}}): two learners on "
                              "one lineage would train its groups twice; stop it first, or give this one another "
                              "learner.checkpoint.dir",
                         unwritable=f"learner.checkpoint.dir {d} cannot be written ({{why}})",
                         not_a_directory=f"learner.checkpoint.dir {d} is a file, not a directory")

    async def _run(self) -> int:
        cfg = self.cfg
        await kafka.ensure_topics(cfg.kafka, partitions=cfg.kafka_partitions)
        resumed = await compute_thread.run(self.restore)
        producer = self._producer = kafka.make_producer(cfg.kafka, client_id="winnow-learner")
        # A singleton: it assigns itself every partition of the groups topic instead of joining a consumer
        # group, so a restarted learner reads at once (group_id is still used to commit offsets).
        consumer = self._consumer = kafka.make_consumer(cfg.kafka, None, cfg.group_id, client_id="winnow-learner")
        publisher = self._publisher = WeightPublisher(
            cfg.weights.dir, producer, self.names.weights, keep=cfg.weights.keep, keep_every=cfg.weights.keep_every,
            uri_root=cfg.weights.uri_root,
            dtype=cfg.weights.dtype, hf_model=self.trainer.model, hf_tokenizer=self.tokenizer)
        await producer.start()
        try:
            await consumer.start()
            offsets = self.book.state.offsets.get(self.names.groups, {})
            await kafka.assign_all_partitions(consumer, self.names.groups,
                                              {int(p): int(o) for p, o in offsets.items()})
            await self._reconcile_offsets()
            if self.version > 0 or self._store_has_versions():  # generators must follow this lineage's weights
                self.metrics.weight_version.set(self.version)
                await self._publish()
            if resumed and cfg.rerelease_on_resume:
                await self._send(self.book.resume_releases())
            if self.version == 0 and self.evaluate is not None and cfg.eval.every:  # the baseline
                row = {"version": 0, "time": time.time(), **await self._evaluate()}
                self.tracking.log_row(append_jsonl(self._jsonl, row))
            self._running = True
            log.info("learner at version %d: %d groups x n=%d a step", self.version, cfg.batch_groups, cfg.n)
            while not self._done():
                await self._step()
            if self.version != self._checkpointed_version and self.steps_run:
                await self._checkpoint_and_commit()
            if cfg.max_steps is not None and self.version >= cfg.max_steps:  # a finished run stays finished
                await finish_run(cfg.run_dir, version=self.version, max_steps=cfg.max_steps,
                                 run_id=self.book.state.run_id or "", publisher=publisher)
                self.metrics.run_finished.set(1)
        finally:
            self._running = False
            self.tracking.close()
            for r in await asyncio.gather(consumer.stop(), producer.stop(), return_exceptions=True):
                if isinstance(r, Exception):  # shutting down: log and go on
                    log.warning("stopping a Kafka client failed: %s", r)
        return self.steps_run

    # -- one step -------------------------------------------------------------------------------

    async def _step(self) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        batch = await self._collect()
        if batch is None:
            return
        t1, version_before = time.perf_counter(), self.version
        result = await compute_thread.run(self.trainer.train_step, [b.group for b in batch])
        t2 = time.perf_counter()
        self.tracking.record_groups([b.message for b in batch], list(result.group_outcomes), step=self.version,
                                    judged=result.judged)
        for b, outcome in zip(batch, result.group_outcomes, strict=True):
            self.book.finish(b.request_id, b.prompt_id, b.where, outcome)
            self.metrics.staleness.observe(max(0, version_before - b.policy_version))
        self.metrics.sync_outcomes(self.book.counts)
        self.steps_run += 1
        last = cfg.max_steps is not None and self.version >= cfg.max_steps
        if published := self.version % cfg.weights.publish_every == 0 or last:
            await self._publish_or_defer()
        t3 = time.perf_counter()
        if checkpointed := self.version % cfg.checkpoint.every == 0 or last:
            await self._checkpoint_and_commit()
        t4 = time.perf_counter()
        self.metrics.observe_step(result, self.version, wait_s=t1 - t0, compute_s=t2 - t1, publish_s=t3 - t2)
        evaluated = self.evaluate is not None and cfg.eval.every and self.version % cfg.eval.every == 0
        self.tracking.log_row(append_jsonl(self._jsonl, {
            "version": self.version, "time": time.time(), "wait_s": t1 - t0, "compute_s": t2 - t1,
            "publish_s": t3 - t2 if published else 0.0, "checkpoint_s": t4 - t3 if checkpointed else 0.0,
            **({"published_changed_fraction": changed}
               if published and (changed := _made(self._publisher).changed) is not None else {}),
            "outcomes": {str(k): v for k, v in self.book.counts.items()},
            "batch_outcomes": {o: result.group_outcomes.count(o) for o in set(result.group_outcomes)},
            "unconsumed": self.book.outstanding, "next_position": self.book.state.next_position,
            "keep_rate": self.book.keep_rate, "prompts_per_trained_group":
                self.book.state.prompts_released / max(1, self.book.counts[Outcome.TRAINED]),
            **(await self._evaluate() if evaluated else {}), **result.metrics,
        }))

    async def _evaluate(self) -> dict[str, float]:
        """Run the evaluator; export and return {"eval_accuracy"[, "eval_mean_at_k"]}."""
        evaluate = self.evaluate
        assert evaluate is not None, "called only with an evaluator"
        accuracy = await compute_thread.run(lambda: evaluate(self.trainer.eval_view()))
        return self.metrics.observe_eval(self.cfg.eval.set_name, accuracy, evaluate.last_mean_at_k)

    # -- prompts and groups -----------------------------------------------------------------------

    async def _collect(self) -> list[Buffered] | None:
        """Release and read until ``batch_groups`` fresh groups are buffered; None if stopped first."""
        while True:
            if stale := self.book.drop_stale(self.version):  # into the sample log, judged as the step would
                self.tracking.record_groups([b.message for b in stale], ["stale"] * len(stale), step=self.version + 1,
                                            judged=judge_samples([b.group for b in stale], self.trainer.algo))
            releases, timed_out = self.book.releases(time.monotonic(), more=not self._done())
            await self._send(releases)  # first: slots freed by the last step keep the generators busy
            batch = self.book.take_batch()
            self.metrics.observe_book(self.book, timed_out)
            if batch is not None or self._done():
                return batch
            consumer = _made(self._consumer)
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for record in records:
                    self._on_record(record)
            now = time.monotonic()
            if got:
                self._last_record = now
            # a quiet groups topic, or a recovery (a refused announcement) still to finish: records that keep coming
            # (stale groups of the weights the generators hold) must not put it off, or the run waits for weights
            # that are never announced
            quiet = not got and self.book.outstanding and now - self._last_record > BROKER_CHECK_S
            if quiet or (self._recovering and now - self._last_check > BROKER_CHECK_S):
                self._last_record = self._last_check = now
                await self._check_broker()
            try:
                self.metrics.consumer_lag.set(await kafka.consumer_lag(consumer))
            except Exception as e:  # metric only
                log.debug("consumer lag unavailable: %s", e)

    async def _send(self, releases: list[Release]) -> None:
        futures = []
        for r in releases:
            problem = await asyncio.to_thread(self.source.get, r.position)
            if self.prompt_tokens is not None and (k := self.prompt_tokens(problem)) > self.cfg.max_prompt_tokens:
                log.warning("not releasing %s: %d prompt tokens > max_prompt_tokens", problem.prompt_id, k)
                self.book.reject(r, problem.prompt_id)
                continue
            req = prompt_request(problem, r.request_id, n=self.cfg.n, sampling=self.cfg.sampling,
                                 version=self.version, now=time.time())
            futures.append(await kafka.send(_made(self._producer), self.names.prompts, req, wait=False))
            self.metrics.prompts_released.inc()
        for fut in futures:
            await fut

    def _on_record(self, record: ConsumerRecord) -> None:
        where = Position(record.topic, record.partition, record.offset)
        self.book.track(where)
        if not kafka.verify_group_record(record, self._group_key):  # a foreign writer without the shared key
            self.dead_letters.write(where, "", "unauthenticated: missing or wrong winnow-hmac header",
                                    len(record.value or b""))
            return self.book.done(where, Outcome.UNAUTHENTICATED)
        on_corrupt = lambda why, _: self.dead_letters.write(where, "", why)  # noqa: E731
        if (msg := kafka.decode_record(kafka.ScoredGroup, record, on_corrupt,
                                       max_bytes=self.cfg.kafka.max_message_bytes)) is None:
            return self.book.done(where, Outcome.CORRUPT)
        if self.book.duplicate(where, msg.request_id):
            return
        try:
            group = group_from_proto(msg, self.cfg.n, vocab_size=self._vocab_size,
                                     max_response_tokens=self.cfg.sampling.max_new_tokens,
                                     max_prompt_tokens=self.cfg.max_prompt_tokens)
        except ShapeMismatch as e:  # answers a request of other settings: ask again once, under the next attempt
            self.dead_letters.write(where, msg.request_id, str(e), len(record.value or b""))
            if self.book.ask_again(where, msg.request_id, msg.prompt_id, Outcome.CORRUPT):
                log.warning("%s: released again (the group answers a request of other settings)", e)
            return
        except ValueError as e:
            self.dead_letters.write(where, msg.request_id, str(e), len(record.value or b""))
            self.book.drop(where, msg.request_id, msg.prompt_id, Outcome.CORRUPT)
            return
        newest = max(v for s in group.samples for v in s.policy_versions)
        outcome = self.book.receive(where, group, group.prompt_id, group.policy_version, newest, self.version, msg)
        if outcome is not None:
            return log.warning("dropping group %s from %s: %s", msg.request_id, msg.generator_id or "?", outcome)
        self.metrics.observe_samples(status_label(s.status) for s in group.samples)
        if self.trainer.algo.dynamic:
            self._judge_on_arrival(group, msg)

    def _judge_on_arrival(self, group: GroupData, msg: messages_pb2.ScoredGroup) -> None:
        """Dynamic sampling: a group the filter would leave without a trained sample is finished now (all_correct /
        all_wrong, in the ledger and the sample log), so the batch fills with groups that train."""
        judged = judge_samples([group], self.trainer.algo)
        kept = any(judged.kept[0])
        all_correct = all(s.status == Status.CORRECT for s in group.samples)
        outcome = Outcome.ALL_CORRECT if all_correct else Outcome.ALL_WRONG
        if not self.book.judged(group.request_id, group.prompt_id, kept, outcome):
            self.tracking.record_groups([msg], [str(outcome)], step=self.version + 1, judged=judged)
            self.metrics.samples_not_trained.inc(len(group.samples))
        self.metrics.keep_rate.set(self.book.keep_rate)

    # -- weights and checkpoints ------------------------------------------------------------------

    async def _publish(self) -> None:  # write the weights, then announce them
        publisher = _made(self._publisher)
        ann = await compute_thread.run(publisher.write, self.trainer)
        if publisher.changed is not None:  # the weights are in the store, announced or not
            self.metrics.published_changed.set(publisher.changed)
        await publisher.announce(ann)
        faults.maybe_die("publish", self.version)

    async def _publish_or_defer(self) -> None:
        """A step's publish. A broker that refuses the announcement (it lost its topics under the running learner, a
        partition leader is moving) does not stop training: the weights are in the store, and the broker check's
        recovery announces them again once the broker answers (within ``BROKER_CHECK_S``, whether groups come or not)."""
        try:
            if faults.armed("deferred", self.version):  # crash tests only (learner/faults.py)
                raise KafkaError(f"the announcement of v{self.version} refused (WINNOW_FAULT)")
            await self._publish()
        except KafkaError as e:
            log.warning("announcing v%d failed (%s): training goes on; the broker check re-announces it", self.version,
                        e)
            self._recovering = True
            faults.maybe_die("deferred", self.version)

    async def _checkpoint_and_commit(self) -> None:
        """Checkpoint, then commit the offsets below which every group is done (and so in the checkpoint)."""
        t0 = time.perf_counter()
        state = self.book.state_for_checkpoint(self.version)
        await asyncio.to_thread(self.ledger.append, self.version, self.book.take_ledger_rows())
        await compute_thread.run(self.trainer.write_checkpoint, self.cfg.checkpoint.dir, state, self.cfg.checkpoint.keep)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self._checkpointed_version = self.version
        consumer = _made(self._consumer)
        to_commit = self.book.to_commit(owned=set(consumer.assignment()))  # TopicPartition == (topic, p)
        try:
            await kafka.commit_offsets(consumer, to_commit)
        except KafkaError as e:  # safe to leave: a restart re-reads from the last commit, and dedupes (checkpoint)
            log.warning("committing offsets after checkpoint v%d failed (%s); the next checkpoint commits them",
                        self.version, e)
            return
        self.book.mark_committed(to_commit)
