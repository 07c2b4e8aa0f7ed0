"""Scoring a batch's samples: each task's verifier (gRPC, or the in-process math verifier), and what a failure
means. A verifier that is down is waited for (``on_verifier_down="wait"``, until the service stops) or its samples
are scored ERROR (``"error"``); a batch the verifier refuses for what it is (:data:`REFUSALS`) is scored ERROR.
Never a silent "wrong". Latency and errors are counted in the generator's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from winnow.generator.config import VerifierRouting
from winnow.generator.metrics import GeneratorMetrics
from winnow.scoring import AsyncVerifier, Verifier
from winnow.verdict import Item, Status, Verdict

log = logging.getLogger(__name__)


REFUSALS = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE", "UNIMPLEMENTED"})
"""gRPC codes that refuse a request for what it is, not for the verifier's state: a batch refused with one
is scored ERROR (and trained as the reward map says) instead of being retried forever like an outage."""


class Scorer:
    """Scores items through the verifier configured for their task.

    Tasks routed to an endpoint use a :class:`~winnow.verifier.client.VerifierClient` (one per
    endpoint); the others the in-process math verifier (built on first use, run in a thread).
    When a verifier fails, ``on_verifier_down="wait"`` retries with back-off until it answers
    (or ``stopping()`` turns true: then :class:`ScoringAborted` is raised and nothing is
    published); ``"error"`` returns STATUS_ERROR verdicts. Never a silent "wrong".
    """

    def __init__(
        self,
        routing: VerifierRouting,
        metrics: GeneratorMetrics,
        *,
        in_process: Verifier | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.routing = routing
        self.metrics = metrics
        self._in_process = in_process
        self._owns_in_process = in_process is None  # close only what this scorer built
        self._clients: dict[str, AsyncVerifier] = {}
        self._stopping = stopping

    def _client(self, endpoint: str) -> AsyncVerifier:
        client = self._clients.get(endpoint)
        if client is None:
            from winnow.scoring import verifier_client

            client = verifier_client(
                endpoint,
                token=self.routing.token.get_secret_value() if self.routing.token else None,
                timeout_s=self.routing.timeout_s,
                retry_total_s=min(10.0, self.routing.timeout_s),
            )
            self._clients[endpoint] = client
        return client

    def _local(self) -> Verifier:
        if self._in_process is None:
            from winnow.scoring import in_process_verifier

            self._in_process = in_process_verifier(
                workers=self.routing.in_process_workers, timeout_s=self.routing.in_process_timeout_s
            )
        return self._in_process

    async def _call(self, endpoint: str, items: list[Item]) -> list[Verdict]:
        t0 = time.perf_counter()
        if endpoint:
            verdicts = await self._client(endpoint).verify_batch(items)
        else:
            verdicts = await asyncio.to_thread(self._local().verify_batch, items)
        self.metrics.verifier_latency.observe(time.perf_counter() - t0)
        if len(verdicts) != len(items):
            raise RuntimeError(f"verifier returned {len(verdicts)} verdicts for {len(items)} items")
        return list(verdicts)

    async def _call_with_policy(self, endpoint: str, items: list[Item]) -> list[Verdict]:
        delay = self.routing.retry_interval_s
        while True:
            try:
                return await self._call(endpoint, items)
            except Exception as e:  # process boundary: any verifier failure is counted and handled
                self.metrics.verifier_errors.inc()
                where = endpoint or "in-process verifier"
                refused = getattr(getattr(e, "code", None), "name", None)
                if refused in REFUSALS:  # the verifier refuses this batch: asking again gets the same answer
                    log.error("verifier %s refused a batch (%s); marking its %d samples ERROR", where, e, len(items))
                    return [Verdict(id=it.id, status=Status.ERROR, detail=f"verifier refused: {e}") for it in items]
                if self.routing.on_verifier_down == "error":
                    log.error("verifier %s failed (%s); marking %d samples ERROR", where, e, len(items))
                    return [
                        Verdict(id=it.id, status=Status.ERROR, detail=f"verifier failed: {e}") for it in items
                    ]
                if self._stopping():
                    raise ScoringAborted(f"stopping while verifier {where} is down") from e
                log.warning("verifier %s failed (%s); retrying in %.1fs", where, e, delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    async def score(self, items: list[Item]) -> list[Verdict]:
        """One verdict per item, in order; items are grouped by endpoint and sent concurrently."""
        by_endpoint: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_endpoint.setdefault(self.routing.endpoint_for(it.task), []).append(i)
        out: list[Verdict | None] = [None] * len(items)
        endpoints = list(by_endpoint)
        results = await asyncio.gather(
            *(self._call_with_policy(ep, [items[i] for i in by_endpoint[ep]]) for ep in endpoints)
        )
        for ep, verdicts in zip(endpoints, results, strict=True):
            for i, v in zip(by_endpoint[ep], verdicts, strict=True):
                out[i] = v
        return out  # type: ignore[return-value]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        closer = getattr(self._in_process, "close", None)
        if self._owns_in_process and closer is not None:
            await asyncio.to_thread(closer)
            self._in_process = None


class ScoringAborted(RuntimeError):
    """Scoring was abandoned because the service is stopping (the batch is not committed)."""
