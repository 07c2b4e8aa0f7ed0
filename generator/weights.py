"""Following the learner's weights, the one reader of the weights topic: the I/O around
:class:`~winnow.generator.state.GeneratorState`'s decisions.

The compacted weights topic is read by a consumer without a group (assigned, from the beginning; compaction keeps
it short). Between batches the newest announcement is compared with the loaded version; a new one is located
(local path, ``file://`` URI, relative to ``weights.root``), its sha256 checked, and loaded with
``engine.load_weights``. A refused announcement (outside the weight store, or a version jump above
``weights.max_version_jump``) is logged and counted in ``winnow_generator_weight_refusals_total{reason}`` without
opening anything. A sha256 mismatch, or a file that does not fit the model, is logged, counted in
``winnow_generator_weight_reload_failures_total`` and that announcement is skipped; a missing file is retried at
the next poll (shared volumes can lag).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from winnow import compute_thread
from winnow.generator.engine import Engine
from winnow.generator.metrics import GeneratorMetrics
from winnow.generator.state import GeneratorState, Refusal
from winnow.weight_store import sha256_file

if TYPE_CHECKING:
    from winnow.v1.messages_pb2 import WeightAnnouncement

log = logging.getLogger(__name__)


class RecordSource(Protocol):
    """What the follower reads announcements from: an aiokafka consumer assigned to the weights topic."""

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> Mapping[Any, Sequence[Any]]:
        """Records fetched within ``timeout_ms``, by partition."""
        ...


class WeightFollower:
    """Reads announcements into ``state`` and loads what it says to load into ``engine``."""

    def __init__(self, state: GeneratorState, engine: Engine, metrics: GeneratorMetrics, *, catch_up_s: float,
                 stopping: Callable[[], bool], on_corrupt: Callable[[str, Any], None]) -> None:
        self.state = state
        self.engine = engine
        self.metrics = metrics
        self.catch_up_s = catch_up_s
        self._stopping = stopping
        self._on_corrupt = on_corrupt

    async def poll(self, consumer: RecordSource, *, drain_s: float = 0.0) -> None:
        """Read new announcements (the last valid one wins) and load it if it is new."""
        from winnow.kafka import WeightAnnouncement, decode_record

        deadline = time.monotonic() + drain_s
        while True:
            batches = await consumer.getmany(timeout_ms=100 if drain_s else 0)
            got = 0
            for records in batches.values():
                for record in records:
                    got += 1
                    ann = decode_record(WeightAnnouncement, record, self._on_corrupt,
                                        max_bytes=self.state.max_message_bytes)
                    if ann is not None:
                        self.state.announced(ann)
            if not got and (not drain_s or time.monotonic() >= deadline):
                break
        self.state.polled(time.monotonic())
        ann = self.state.to_load(self.engine.version)
        if ann is not None:
            await self.load(ann)

    async def catch_up(self, consumer: RecordSource, version: int) -> None:
        """Load (at least) ``version`` before generating, waiting up to ``weights.catch_up_s``: the
        learner announces new weights before it releases the prompts that expect them."""
        deadline = time.monotonic() + self.catch_up_s
        while self.state.catching_up(self.engine.version, version, time.monotonic(), deadline) and not self._stopping():
            await self.poll(consumer, drain_s=0.1)
        if self.engine.version < version:
            log.warning("generating with weights v%d for requests released at v%d", self.engine.version, version)

    async def load(self, ann: WeightAnnouncement) -> bool:
        """Verify and load ``ann``; False (logged, counted) if it was refused, is missing, or failed."""
        t0 = time.perf_counter()
        path = self.state.locate(ann, self.engine.version)
        if isinstance(path, Refusal):
            log.error("weights v%d refused (%s): %s", ann.version, path.reason, path.detail)
            self.metrics.weight_refusals.labels(reason=path.reason).inc()
            return False
        if not path.is_file():
            log.warning("weights v%d: file %s not found (yet); will retry", ann.version, path)
            self.metrics.weight_reload_failures.inc()
            return False
        digest = await asyncio.to_thread(sha256_file, path)
        if digest != ann.sha256:
            log.error("weights v%d: sha256 mismatch for %s (announced %s, file %s); skipping this version",
                      ann.version, path, ann.sha256[:12], digest[:12])
            self.state.reject(ann)
            self.metrics.weight_reload_failures.inc()
            return False
        try:
            await compute_thread.run(self.engine.load_weights, str(path), int(ann.version))
        except Exception as e:  # process boundary: a bad file must not kill the generator
            log.error("weights v%d: loading %s failed: %s; skipping this version", ann.version, path, e)
            self.state.reject(ann)
            self.metrics.weight_reload_failures.inc()
            return False
        self.state.loaded(ann)
        dt = time.perf_counter() - t0
        self.metrics.weight_reload_seconds.observe(dt)
        self.metrics.weight_version.set(self.engine.version)
        log.info("loaded weights v%d (%s) in %.2fs", ann.version, path, dt)
        return True
