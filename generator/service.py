"""The generator service: prompt requests in, scored groups out. The I/O shell: every decision is
:class:`~winnow.generator.state.GeneratorState`'s (pure, tests/generator/test_state.py), sampling and scoring a
batch is :mod:`winnow.generator.batch`, weights are followed by :mod:`winnow.generator.weights`, scoring is
:mod:`winnow.generator.scoring`, metrics :mod:`winnow.generator.metrics`.

Loop (one asyncio task; the engine and the in-process verifier block, so they run in threads)::

    poll weights topic -> load new version (sha256 checked)     between batches only
    fetch up to batch_prompts PromptRequests (consumer group, manual commits)
    build prompt ids -> engine.generate(n per request)         thread
    score every sample (gRPC verifier per task, or in-process) verifier errors: wait or ERROR
    publish one ScoredGroup per request, wait for the acks
    commit the prompt offsets                                  only after the acks

Delivery: a request is committed only after its group is acknowledged, so a crash or SIGTERM
mid-batch re-delivers the batch to another generator (at-least-once; the learner dedupes by
``request_id``). Corrupt PromptRequests are logged, counted and committed past (they would never
decode on re-delivery), and so are poison ones (:meth:`GeneratorService.quarantine`: every count and
size a request carries is bounded before anything is allocated for it; a group that still came out
larger than a Kafka message is dropped, not retried). With a shared secret (``winnow.kafka.group_hmac_key``)
every group is signed (header ``winnow-hmac``) so the learner can refuse groups from foreign writers.

Weights: :mod:`winnow.generator.weights` (a second consumer, without a group); how the engine loads a version is
exported as ``winnow_generator_weight_reload_inplace`` / ``_fallback``. Every token records the version that produced
it. After the learner's final weights the generator leaves the prompts group until a newer announcement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from winnow.chat import PromptFormatter
from winnow.generator.batch import generate_and_score
from winnow.generator.config import GeneratorConfig
from winnow.generator.engine import Engine
from winnow.generator.metrics import GeneratorMetrics
from winnow.generator.scoring import Scorer, ScoringAborted
from winnow.generator.state import GeneratorState
from winnow.generator.weights import WeightFollower
from winnow.offsets import OffsetTracker
from winnow.sampling import GenerationCancelled
from winnow.scoring import Verifier
from winnow.v1 import messages_pb2

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

    from winnow.kafka import Topics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    record: ConsumerRecord
    request: messages_pb2.PromptRequest


class GeneratorService:
    """Consumes PromptRequests, publishes ScoredGroups (see the module docstring).

    ``engine`` is any :class:`~winnow.generator.engine.Engine`; ``scorer`` defaults to a
    :class:`~winnow.generator.scoring.Scorer` over ``cfg.verifier`` (pass ``in_process=`` a ready MathVerifier to
    share one).
    """

    def __init__(self, cfg: GeneratorConfig, engine: Engine, registry: CollectorRegistry | None = None, *,
                 scorer: Scorer | None = None, in_process_verifier: Verifier | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        self.metrics = GeneratorMetrics(self.registry)
        self.generator_id = cfg.generator_id or f"{socket.gethostname()}-{os.getpid()}"
        self.formatter = PromptFormatter(engine.tokenizer, cfg.chat)
        self._stop = asyncio.Event()
        self.scorer = scorer or Scorer(cfg.verifier, self.metrics, in_process=in_process_verifier,
                                       stopping=self._stop.is_set)
        self.state = GeneratorState.from_config(cfg)
        self.weights = WeightFollower(self.state, engine, self.metrics, catch_up_s=cfg.weights.catch_up_s,
                                      stopping=self._stop.is_set, on_corrupt=self._on_corrupt)
        self.metrics.weight_version.set(engine.version)
        reload_info = getattr(engine, "reload_info", None) or {"mode": "inplace", "fallback": False}
        self.metrics.weight_reload_inplace.set(1 if reload_info.get("mode") == "inplace" else 0)
        self.metrics.weight_reload_fallback.set(1 if reload_info.get("fallback") else 0)
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()
        self._tracker = OffsetTracker()  # the prompt records' offsets: a fresh one each run()
        self._consumer: AIOKafkaConsumer | None = None  # the prompts consumer: made by run()
        self._running = False
        self.batches = 0

    # -- control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop: the current batch is abandoned uncommitted if the engine can ``cancel()`` (the HF
        engine can) or scoring is waiting for a verifier; otherwise it finishes and is published."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()
            cancel = getattr(self.engine, "cancel", None)
            if cancel is not None:
                cancel()

    def healthy(self) -> bool:
        return self._running and not self._stop.is_set()

    def _on_corrupt(self, reason: str, record: ConsumerRecord) -> None:
        self.metrics.corrupt_messages.inc()

    # -- decisions (the state's), logged and counted --------------------------------------------

    def quarantine(self, req: messages_pb2.PromptRequest) -> bool:
        """True (logged and counted) if ``req`` must not be generated (:meth:`GeneratorState.poison`). A poison
        request is skipped and its offset committed, so it cannot crash-loop every generator of the group in turn
        (the learner also bounds prompts at release)."""
        poison = self.state.poison(req, lambda r: len(self.formatter(r.problem, [(m.role, m.content)
                                                                                 for m in r.messages])))
        if poison is None:
            return False
        log.error("quarantined request %s (%s): %s", req.request_id, poison.reason, poison.detail)
        self.metrics.quarantined.labels(reason=poison.reason).inc()
        return True

    def publishable(self, groups: list[messages_pb2.ScoredGroup]) -> list[messages_pb2.ScoredGroup]:
        """The groups that fit in one Kafka message; each other one is logged and counted as quarantined
        (``size``) and dropped (:meth:`GeneratorState.split_publishable`)."""
        fit, too_large = self.state.split_publishable(groups)
        for g, size in too_large:
            log.error("quarantined request %s (size): its group of %d bytes does not fit kafka.max_message_bytes "
                      "%d", g.request_id, size, self.state.max_message_bytes)
            self.metrics.quarantined.labels(reason="size").inc()
        return fit

    async def process(self, requests: list[messages_pb2.PromptRequest]) -> list[messages_pb2.ScoredGroup]:
        """Generate and score a batch of requests; one ScoredGroup per request, in order
        (:func:`~winnow.generator.batch.generate_and_score`)."""
        return await generate_and_score(requests, engine=self.engine, scorer=self.scorer, formatter=self.formatter,
                                        state=self.state, metrics=self.metrics, generator_id=self.generator_id)

    # -- the loop -----------------------------------------------------------------------------

    async def _wait_while_finished(self, consumer: AIOKafkaConsumer, weights: AIOKafkaConsumer,
                                   prompts_topic: str) -> None:
        """The learner announced its final weights (the run reached max_steps): leave the prompts
        consumer group and stop asking for work, staying healthy, until a newer non-final
        announcement (the run was continued) or SIGTERM."""
        from winnow.kafka import RebalanceHooks

        final = self.state.latest
        assert final is not None, "finished: the final announcement was read"
        log.info("run finished (final weights v%d announced): not consuming %s any more", final.version, prompts_topic)
        consumer.unsubscribe()
        while not self._stop.is_set() and self.state.finished:
            try:
                await asyncio.wait_for(self._stop.wait(), self.cfg.weights.poll_interval_s)
            except TimeoutError:
                await self.weights.poll(weights)
        if not self._stop.is_set():
            latest = self.state.latest
            assert latest is not None, "an announcement once read stays the latest until a newer one"
            log.info("weights v%d announced after the final ones: consuming %s again", latest.version, prompts_topic)
            consumer.subscribe([prompts_topic], listener=RebalanceHooks(on_revoked=self._on_revoked))

    async def _on_revoked(self, partitions: set[TopicPartition]) -> None:
        # Let the in-flight batch publish and commit before the partitions move on, so a normal
        # rebalance does not duplicate work (bounded: a stuck batch must not block the group).
        try:
            await asyncio.wait_for(self._batch_idle.wait(), timeout=self.cfg.revoke_wait_s)
        except TimeoutError:
            log.warning("rebalance: in-flight batch still running; its prompts may be redelivered")
        self._tracker.forget(partitions)

    async def _commit(self) -> None:
        from aiokafka.errors import KafkaError

        from winnow.kafka import commit_offsets

        consumer = self._consumer
        assert consumer is not None, "made by GeneratorService.run()"
        offsets = self._tracker.to_commit()
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            await commit_offsets(consumer, offsets)
            self._tracker.mark_committed(offsets)
        except KafkaError as e:  # rebalanced away: the next owner re-processes (learner dedupes)
            log.warning("offset commit failed (%s); those prompts may be redelivered", e)

    async def _lag_loop(self, consumer: AIOKafkaConsumer) -> None:
        from winnow.kafka import consumer_lag

        while True:
            try:
                self.metrics.consumer_lag.set(await consumer_lag(consumer))
            except Exception as e:  # metric only
                log.debug("consumer lag unavailable: %s", e)
            await asyncio.sleep(self.cfg.lag_interval_s)

    def _admit(self, records: list[ConsumerRecord]) -> list[_Pending]:
        """Track every record; the ones that decode and are not poison, to generate (the others are done)."""
        from winnow.kafka import PromptRequest, decode_record

        pending = []
        for record in records:
            self._tracker.track(record)
            req = decode_record(PromptRequest, record, self._on_corrupt, max_bytes=self.cfg.kafka.max_message_bytes)
            if req is None or self.quarantine(req):
                self._tracker.done(record)
            else:
                pending.append(_Pending(record, req))
        return pending

    async def _publish_batch(self, producer: AIOKafkaProducer, topic: str, pending: list[_Pending],
                             hmac_key: bytes | None) -> bool:
        """Generate, score, publish and commit one batch; False if it was abandoned (stopping)."""
        from winnow.kafka import send

        self._batch_idle.clear()
        self.metrics.requests_in_flight.set(len(pending))
        try:
            groups = self.publishable(await self.process([p.request for p in pending]))
            futures = [await send(producer, topic, g, wait=False, hmac_key=hmac_key) for g in groups]
            # every group must be acknowledged before its prompt offset is committed: a
            # delivery error raises here and the prompts are redelivered, never lost
            await asyncio.gather(*futures)
            self.metrics.groups_published.inc(len(groups))
            for p in pending:
                self._tracker.done(p.record)
            await self._commit()
            self.batches += 1
            return True
        except (ScoringAborted, GenerationCancelled) as e:
            log.info("batch abandoned (%s); its prompts will be redelivered", e)
            return False
        finally:
            self.metrics.requests_in_flight.set(0)
            self._batch_idle.set()

    async def _loop(self, consumer: AIOKafkaConsumer, weights: AIOKafkaConsumer, producer: AIOKafkaProducer,
                    names: Topics, hmac_key: bytes | None) -> None:
        from winnow.kafka import fetch_records

        while not self._stop.is_set():
            if self.cfg.weights.enabled and self.state.poll_due(time.monotonic()):
                await self.weights.poll(weights)
            if self.state.finished:
                await self._wait_while_finished(consumer, weights, names.prompts)
                continue
            records = await fetch_records(consumer, self.cfg.batch_prompts, self.cfg.batch_wait_ms,
                                          self._stop.is_set)
            if not records:
                continue
            pending = self._admit(records)
            if not pending:
                await self._commit()
                continue
            if self.cfg.weights.enabled:
                await self.weights.catch_up(weights, max(p.request.release_version for p in pending))
            if not await self._publish_batch(producer, names.groups, pending, hmac_key):
                break

    async def run(self) -> None:
        """Run until :meth:`request_stop`. Creates the topics if missing."""
        from aiokafka import TopicPartition

        from winnow.kafka import (
            ensure_topics,
            group_hmac_key,
            make_consumer,
            make_producer,
            topics,
        )

        kcfg = self.cfg.kafka
        names = topics(kcfg)
        hmac_key = group_hmac_key(kcfg)  # a configured but unreadable key fails here, before any client starts
        if hmac_key is not None:
            log.info("signing scored groups with HMAC-SHA256 (header winnow-hmac)")
        clear = getattr(self.engine, "clear_cancel", None)
        if clear is not None:
            clear()
        await ensure_topics(kcfg, partitions=self.cfg.kafka_partitions)
        client_id = f"winnow-generator-{self.generator_id}"
        producer = make_producer(kcfg, client_id=client_id)
        consumer = make_consumer(kcfg, [names.prompts], self.cfg.group_id, on_revoked=self._on_revoked,
                                 client_id=client_id, max_poll_interval_ms=self.cfg.max_poll_interval_ms)
        weights = make_consumer(kcfg, None, None, client_id=f"winnow-generator-weights-{self.generator_id}")
        self._consumer, self._tracker = consumer, OffsetTracker()
        lag_task = None
        await producer.start()
        try:
            await consumer.start()
            await weights.start()
            if self.cfg.weights.enabled:
                parts = weights.partitions_for_topic(names.weights) or {0}
                tps = [TopicPartition(names.weights, p) for p in sorted(parts)]
                weights.assign(tps)
                await weights.seek_to_beginning(*tps)
                if self.cfg.weights.load_latest_on_start:
                    await self.weights.poll(weights, drain_s=1.0)
            lag_task = asyncio.create_task(self._lag_loop(consumer))
            self._running = True
            log.info("generator %s consuming %s (group %s), publishing %s, weights v%d", self.generator_id,
                     names.prompts, self.cfg.group_id, names.groups, self.engine.version)
            await self._loop(consumer, weights, producer, names, hmac_key)
        finally:
            self._running = False
            if lag_task is not None:
                lag_task.cancel()
            for client in (consumer, weights):
                try:
                    await client.stop()
                except Exception as e:  # shutting down: log and go on
                    log.warning("stopping a consumer failed: %s", e)
            await producer.stop()
            await self.scorer.close()
