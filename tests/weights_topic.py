"""What the weights topic announces last, read from its beginning: the tests' way to see what a learner announced.

Test-only: the one reader of the weights topic in the product is the generators' follower
(:mod:`winnow.generator.weights`, which reads it incrementally into its state); this reads it once to its end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from winnow.config import KafkaConfig
from winnow.kafka import WeightAnnouncement, decode_record, make_consumer, topics

log = logging.getLogger(__name__)


async def latest_weight_announcement(
    cfg: KafkaConfig,
    *,
    timeout_s: float = 15.0,
    idle_s: float = 1.0,
    on_corrupt: Callable[[str, Any], Any] | None = None,
) -> WeightAnnouncement | None:
    """Read the weights topic from its beginning and return the last valid announcement.

    "Last" means last published (highest offset), which is also what compaction keeps and what the
    generators follow: if a learner restarted from an older checkpoint and re-announced a lower
    version, that is the latest. Returns None if the topic is missing or empty.

    The end of the log is found two ways, so that it works on every broker: positions reaching
    the end offsets (followed by one empty poll), or no new record for ``idle_s``. Tansu's
    ListOffsets "latest" can under-report; the empty poll and the idle rule cover it.
    """
    topic = topics(cfg).weights
    consumer = make_consumer(cfg, None, None, client_id="winnow-weights-reader")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return None
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            return None
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        try:
            end = await consumer.end_offsets(tps)
        except Exception as e:  # noqa: BLE001 - optional hint only; the idle rule still ends the read
            log.debug("end_offsets failed (%s); relying on the idle rule", e)
            end = {}
        best: tuple[int, float, int] | None = None
        latest: WeightAnnouncement | None = None
        start = last_record = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            n = 0
            for records in batches.values():
                for record in records:
                    n += 1
                    ann = decode_record(WeightAnnouncement, record, on_corrupt)
                    if ann is None:
                        continue
                    # one partition: offset order; several (misconfigured): newest created_at wins
                    rank = (0, ann.created_at, record.offset) if len(tps) > 1 else (0, 0.0, record.offset)
                    if best is None or rank >= best:
                        best, latest = rank, ann
            if n:
                last_record = now
                continue
            at_end = bool(end) and all([await consumer.position(tp) >= end.get(tp, 0) for tp in tps])
            if at_end or now - last_record >= idle_s:
                return latest
            if now - start > timeout_s:
                log.warning("reading %s timed out after %.0fs; using the newest seen", topic, timeout_s)
                return latest
    finally:
        await consumer.stop()
