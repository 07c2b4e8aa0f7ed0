"""The generator service: prompt requests in, scored groups out.

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

Weights: the compacted weights topic is read by a second consumer without a group (assigned,
from the beginning; compaction keeps it short). Between batches the newest announcement is
compared with the loaded version; a new one is located (local path, ``file://`` URI, relative
to ``weights.root``), its sha256 checked, and loaded with ``engine.load_weights``. An announcement
naming a file outside the weight store ``weights.root`` (after resolving symlinks and ``..``), or a
version more than ``weights.max_version_jump`` above the loaded one, is refused without opening
anything (logged, counted in ``winnow_generator_weight_refusals_total{reason}``). A mismatch
(or a file that does not fit the model) is logged, counted in
``winnow_generator_weight_reload_failures_total`` and that announcement is skipped; a missing
file is retried at the next poll (shared volumes can lag). How the engine loads a version (in place, or an
engine restart per version after a failed start-up self-test) is exported as
``winnow_generator_weight_reload_inplace`` and ``winnow_generator_weight_reload_fallback``. Every sample records, per token, the
version that produced it; weights never change inside a batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from winnow.chat import PromptFormatter
from winnow.generator.config import GeneratorConfig, VerifierRouting
from winnow.generator.engine import Engine
from winnow.sampling import Completion, GenerationCancelled, SamplingConfig
from winnow.v1 import messages_pb2
from winnow.verdict import Item, Status, Verdict

log = logging.getLogger(__name__)

QUARANTINE_REASONS = ("sampling", "prompt", "n", "size")
"""Labels of ``winnow_generator_quarantined_requests_total``."""
MIN_WIRE_BYTES_PER_TOKEN = 6
"""The least one response token costs in a ScoredGroup: a token id (>= 1 byte), a float log-prob (4 bytes) and a
version (>= 1 byte). A request whose ``n x max_new_tokens`` such tokens exceed a Kafka message cannot be published."""
MAX_CHARS_PER_TOKEN = 64
"""A prompt of more than ``max_prompt_tokens x`` this many characters is too long without tokenizing it."""
MAX_SIDE_BYTES = 64 * 1024
"""Most bytes of a request's ids, task, gold and verifier options together (they go to the verifier and back)."""
MAX_VERIFIER_OPTIONS = 64
"""Most verifier options one request may carry."""
RECORD_OVERHEAD_BYTES = 4096
"""Room left in a Kafka message for the record's key, headers and batch framing."""

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
        for reason in ("location", "version"):
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


# ----------------------------------------------------------------------------------- pure parts


def merge_sampling(default: SamplingConfig, wire: messages_pb2.SamplingParams | None) -> SamplingConfig:
    """The request's sampling parameters over the configured defaults. Proto3 zeros mean "unset":
    temperature 0, top_p 0, top_k 0, max_new_tokens 0, seed 0 take the default (so greedy decoding
    is a generator setting, not a per-request one)."""
    if wire is None:
        return default
    update: dict[str, Any] = {}
    if wire.temperature > 0:
        update["temperature"] = min(10.0, float(wire.temperature))
    if wire.top_p > 0:
        update["top_p"] = min(1.0, float(wire.top_p))
    if wire.top_k > 0:
        update["top_k"] = int(wire.top_k)
    if wire.max_new_tokens > 0:
        update["max_new_tokens"] = int(wire.max_new_tokens)
    if wire.seed != 0:
        update["seed"] = int(wire.seed)
    return SamplingConfig.model_validate({**default.model_dump(), **update})


def sampling_to_wire(s: SamplingConfig) -> messages_pb2.SamplingParams:
    return messages_pb2.SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed or 0,
    )


def build_group(
    request: messages_pb2.PromptRequest,
    prompt_ids: Sequence[int],
    completions: Sequence[Completion],
    verdicts: Sequence[Verdict],
    *,
    sampling: SamplingConfig,
    version: int,
    generator_id: str,
    generation_seconds: float,
    scoring_seconds: float,
) -> messages_pb2.ScoredGroup:
    """One ScoredGroup: every sample with its tokens, behaviour log-probs, per-token policy
    version, finish reason, text, status and extracted answer. The generator reports statuses, not
    rewards: the one status -> reward map is the learner's ``algo`` config (``Sample.reward`` stays 0); a verifier's
    scalar score travels unchanged in ``Sample.score``."""
    if len(completions) != len(verdicts):
        raise ValueError(f"{len(completions)} completions but {len(verdicts)} verdicts")
    samples = []
    for c, v in zip(completions, verdicts, strict=True):
        if len(c.token_ids) != len(c.logprobs):
            raise ValueError(f"completion has {len(c.token_ids)} tokens but {len(c.logprobs)} log-probs")
        status = Status(int(v.status))
        samples.append(
            messages_pb2.Sample(
                response_token_ids=c.token_ids,
                behaviour_logprobs=c.logprobs,
                policy_versions=[version] * len(c.token_ids),
                finish_reason=c.finish_reason,
                text=c.text,
                status=int(status),
                extracted=v.extracted,
                score=v.score,  # the verifier's scalar score, or unset
            )
        )
    return messages_pb2.ScoredGroup(
        prompt_id=request.prompt_id,
        request_id=request.request_id,
        prompt_token_ids=list(prompt_ids),
        samples=samples,
        sampling=sampling_to_wire(sampling),
        generator_id=generator_id,
        policy_version=version,
        task=request.task,
        created_at=time.time(),
        generation_seconds=generation_seconds,
        scoring_seconds=scoring_seconds,
        problem=request.problem,
        gold=request.gold,
    )


def resolve_weight_uri(uri: str, root: str = "") -> Path:
    """The local path a weight URI names inside the weight store ``root`` ("" = the current directory): a
    plain path (a relative one against ``root``) or a ``file://`` URI, with symlinks and ``..`` resolved.
    ValueError for a path outside the store (``/etc/passwd``, ``../x``, a symlink leading out) and for other
    schemes (object stores are not supported yet)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported weight URI scheme {parsed.scheme!r} in {uri!r} (use a path or file://)")
    if "\0" in uri:
        raise ValueError(f"weight URI {uri!r} contains a NUL byte")
    store = Path(root or ".").resolve()
    path = (store / Path(unquote(parsed.path) if parsed.scheme == "file" else uri)).resolve()
    if not path.is_relative_to(store):
        raise ValueError(f"weight URI {uri!r} names {path}, outside the weight store {store} (weights.root)")
    return path


def version_refusal(version: int, current: int, max_jump: int) -> str | None:
    """Why an announced weight ``version`` must not be loaded over ``current``, or None: negative, beyond
    int63, or more than ``max_jump`` above ``current``."""
    if not 0 <= version < 2**63:
        return f"version {version} is outside [0, 2^63)"
    if version - current > max_jump:
        return f"version {version} is more than weights.max_version_jump={max_jump} above the loaded v{current}"
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- scoring


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
        in_process: Any | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.routing = routing
        self.metrics = metrics
        self._in_process = in_process
        self._owns_in_process = in_process is None  # close only what this scorer built
        self._clients: dict[str, Any] = {}
        self._stopping = stopping

    def _client(self, endpoint: str):
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

    def _local(self):
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


# ------------------------------------------------------------------------------------- service


@dataclass(slots=True)
class _Pending:
    record: Any
    request: messages_pb2.PromptRequest


class GeneratorService:
    """Consumes PromptRequests, publishes ScoredGroups (see the module docstring).

    ``engine`` is any :class:`~winnow.generator.engine.Engine`; ``scorer`` defaults to a
    :class:`Scorer` over ``cfg.verifier`` (pass ``in_process=`` a ready MathVerifier to share one).
    """

    def __init__(
        self,
        cfg: GeneratorConfig,
        engine: Engine,
        registry: CollectorRegistry | None = None,
        *,
        scorer: Scorer | None = None,
        in_process_verifier: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        self.metrics = GeneratorMetrics(self.registry)
        self.generator_id = cfg.generator_id or f"{socket.gethostname()}-{os.getpid()}"
        self.formatter = PromptFormatter(engine.tokenizer, cfg.chat)
        self._stop = asyncio.Event()
        self.scorer = scorer or Scorer(
            cfg.verifier, self.metrics, in_process=in_process_verifier, stopping=self._stop.is_set
        )
        self.metrics.weight_version.set(engine.version)
        reload_info = getattr(engine, "reload_info", None) or {"mode": "inplace", "fallback": False}
        self.metrics.weight_reload_inplace.set(1 if reload_info.get("mode") == "inplace" else 0)
        self.metrics.weight_reload_fallback.set(1 if reload_info.get("fallback") else 0)
        self._rejected: set[tuple[int, str]] = set()
        self._last_weights_poll = 0.0
        self._latest_ann: messages_pb2.WeightAnnouncement | None = None
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()
        self._tracker = None
        self._consumer = None
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

    # -- weights ------------------------------------------------------------------------------

    def _on_corrupt(self, reason: str, record: Any) -> None:
        self.metrics.corrupt_messages.inc()

    def _poison(self, req: messages_pb2.PromptRequest) -> tuple[str, str] | None:
        """``(reason, detail)`` if ``req`` must not be generated, else None; the cheap bounds first, the
        tokenizer last, nothing allocated in proportion to what the request asks for."""
        cfg = self.cfg
        n = int(req.n) or 1
        if n > cfg.max_group_size:
            return "n", f"n={n} > max_group_size {cfg.max_group_size}"
        if len(req.verifier_options) > MAX_VERIFIER_OPTIONS:
            return "size", f"{len(req.verifier_options)} verifier options > {MAX_VERIFIER_OPTIONS}"
        side = sum(len(x.encode("utf-8", "replace")) for x in (req.request_id, req.prompt_id, req.task, req.gold))
        side += sum(len(k) + len(v) for k, v in req.verifier_options.items())
        if side > MAX_SIDE_BYTES:
            return "size", f"{side} bytes of ids, task, gold and verifier options > {MAX_SIDE_BYTES}"
        try:
            sampling = merge_sampling(cfg.sampling, req.sampling if req.HasField("sampling") else None)
        except ValidationError as e:
            return "sampling", str(e)[:500]
        least = n * sampling.max_new_tokens * MIN_WIRE_BYTES_PER_TOKEN
        if least > cfg.kafka.max_message_bytes:
            return "size", (f"n={n} x max_new_tokens={sampling.max_new_tokens} tokens need up to {least} bytes, more "
                            f"than kafka.max_message_bytes {cfg.kafka.max_message_bytes}")
        chars = len(req.problem) + sum(len(m.role) + len(m.content) for m in req.messages)
        if chars > cfg.max_prompt_tokens * MAX_CHARS_PER_TOKEN or len(req.messages) > cfg.max_prompt_tokens:
            return "prompt", (f"{chars} characters in {len(req.messages)} messages cannot fit max_prompt_tokens "
                              f"{cfg.max_prompt_tokens}")
        try:
            tokens = len(self.formatter(req.problem, [(m.role, m.content) for m in req.messages]))
        except (ValueError, UnicodeError) as e:
            return "prompt", str(e)[:500]
        if tokens > cfg.max_prompt_tokens:
            return "prompt", f"{tokens} prompt tokens > max_prompt_tokens {cfg.max_prompt_tokens}"
        return None

    def quarantine(self, req: messages_pb2.PromptRequest) -> bool:
        """True (logged and counted) if ``req`` must not be generated: ``n`` above ``max_group_size``, sampling
        parameters out of bounds, a group that could not be published (``n x max_new_tokens`` against
        ``kafka.max_message_bytes``), ids/gold/verifier options too large, or a prompt longer than
        ``max_prompt_tokens``. A poison request is skipped and its offset committed, so it cannot crash-loop every
        generator of the group in turn (the learner also bounds prompts at release)."""
        poison = self._poison(req)
        if poison is None:
            return False
        reason, detail = poison
        log.error("quarantined request %s (%s): %s", req.request_id, reason, detail)
        self.metrics.quarantined.labels(reason=reason).inc()
        return True

    async def _poll_weights(self, consumer, *, drain_s: float = 0.0) -> None:
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
                                        max_bytes=self.cfg.kafka.max_message_bytes)
                    if ann is not None:
                        self._latest_ann = ann
            if not got and (not drain_s or time.monotonic() >= deadline):
                break
        self._last_weights_poll = time.monotonic()
        ann = self._latest_ann
        if ann is None or ann.version == self.engine.version or (ann.version, ann.sha256) in self._rejected:
            return
        await self._load_announced(ann)

    async def _wait_while_finished(self, consumer, weights, prompts_topic: str) -> None:
        """The learner announced its final weights (the run reached max_steps): leave the prompts
        consumer group and stop asking for work, staying healthy, until a newer non-final
        announcement (the run was continued) or SIGTERM."""
        from winnow.kafka import RebalanceHooks

        log.info("run finished (final weights v%d announced): not consuming %s any more",
                 self._latest_ann.version, prompts_topic)
        consumer.unsubscribe()
        while not self._stop.is_set() and self._latest_ann.final:
            try:
                await asyncio.wait_for(self._stop.wait(), self.cfg.weights.poll_interval_s)
            except TimeoutError:
                await self._poll_weights(weights)
        if not self._stop.is_set():
            log.info("weights v%d announced after the final ones: consuming %s again",
                     self._latest_ann.version, prompts_topic)
            consumer.subscribe([prompts_topic], listener=RebalanceHooks(on_revoked=self._on_revoked))

    async def _catch_up(self, consumer, version: int) -> None:
        """Load (at least) ``version`` before generating, waiting up to ``weights.catch_up_s``: the
        learner announces new weights before it releases the prompts that expect them."""
        deadline = time.monotonic() + self.cfg.weights.catch_up_s
        while self.engine.version < version and time.monotonic() < deadline and not self._stop.is_set():
            await self._poll_weights(consumer, drain_s=0.1)
        if self.engine.version < version:
            log.warning("generating with weights v%d for requests released at v%d", self.engine.version, version)

    def _refuse(self, ann: messages_pb2.WeightAnnouncement, reason: str, detail: str) -> bool:
        log.error("weights v%d refused (%s): %s", ann.version, reason, detail)
        self._rejected.add((ann.version, ann.sha256))
        self.metrics.weight_refusals.labels(reason=reason).inc()
        return False

    async def _load_announced(self, ann: messages_pb2.WeightAnnouncement) -> bool:
        t0 = time.perf_counter()
        why = version_refusal(int(ann.version), self.engine.version, self.cfg.weights.max_version_jump)
        if why is not None:
            return self._refuse(ann, "version", why)
        try:
            path = resolve_weight_uri(ann.uri, self.cfg.weights.root)
        except ValueError as e:
            return self._refuse(ann, "location", str(e))
        if not path.is_file():
            log.warning("weights v%d: file %s not found (yet); will retry", ann.version, path)
            self.metrics.weight_reload_failures.inc()
            return False
        digest = await asyncio.to_thread(sha256_file, path)
        if digest != ann.sha256:
            log.error(
                "weights v%d: sha256 mismatch for %s (announced %s, file %s); skipping this version",
                ann.version,
                path,
                ann.sha256[:12],
                digest[:12],
            )
            self._rejected.add((ann.version, ann.sha256))
            self.metrics.weight_reload_failures.inc()
            return False
        try:
            await asyncio.to_thread(self.engine.load_weights, str(path), int(ann.version))
        except Exception as e:  # process boundary: a bad file must not kill the generator
            log.error("weights v%d: loading %s failed: %s; skipping this version", ann.version, path, e)
            self._rejected.add((ann.version, ann.sha256))
            self.metrics.weight_reload_failures.inc()
            return False
        dt = time.perf_counter() - t0
        self.metrics.weight_reload_seconds.observe(dt)
        self.metrics.weight_version.set(self.engine.version)
        log.info("loaded weights v%d (%s) in %.2fs", ann.version, path, dt)
        return True

    # -- one batch ----------------------------------------------------------------------------

    async def process(self, requests: list[messages_pb2.PromptRequest]) -> list[messages_pb2.ScoredGroup]:
        """Generate and score a batch of requests; one ScoredGroup per request, in order.

        Requests with equal ``(n, sampling)`` share one engine call."""
        prompt_ids = [self.formatter(r.problem, [(m.role, m.content) for m in r.messages]) for r in requests]
        samplings = [
            merge_sampling(self.cfg.sampling, r.sampling if r.HasField("sampling") else None)
            for r in requests
        ]
        version = self.engine.version
        buckets: dict[tuple, list[int]] = {}
        for i, (r, s) in enumerate(zip(requests, samplings, strict=True)):
            n = int(r.n) or 1
            buckets.setdefault((n, s.model_dump_json()), []).append(i)
        completions: list[list[Completion] | None] = [None] * len(requests)
        gen_seconds = [0.0] * len(requests)
        for (n, _), idx in buckets.items():
            t0 = time.perf_counter()
            outs = await asyncio.to_thread(
                self.engine.generate, [prompt_ids[i] for i in idx], n, samplings[idx[0]]
            )
            dt = time.perf_counter() - t0
            self.metrics.generation_seconds.observe(dt)
            for i, out in zip(idx, outs, strict=True):
                completions[i] = out
                gen_seconds[i] = dt
                self.metrics.tokens.inc(sum(len(c.token_ids) for c in out))
        # Ids are unique by batch position: a request can sit in one batch twice (a re-release
        # after a learner restart redelivered next to the original record); the verifier API
        # refuses duplicate ids, and the learner drops the second group by its request id.
        items = [
            Item(
                id=f"{i}:{r.request_id}/{j}",
                response=c.text,
                gold=r.gold,
                task=r.task,
                options=dict(r.verifier_options),
                prompt=r.problem,
            )
            for i, (r, comps) in enumerate(zip(requests, completions, strict=True))
            for j, c in enumerate(comps or [])
        ]
        t0 = time.perf_counter()
        verdicts = await self.scorer.score(items)
        score_s = time.perf_counter() - t0
        groups, k = [], 0
        for i, r in enumerate(requests):
            comps = completions[i] or []
            groups.append(
                build_group(
                    r,
                    prompt_ids[i],
                    comps,
                    verdicts[k : k + len(comps)],
                    sampling=samplings[i],
                    version=version,
                    generator_id=self.generator_id,
                    generation_seconds=gen_seconds[i],
                    scoring_seconds=score_s,
                )
            )
            k += len(comps)
        return groups

    def publishable(self, groups: list[messages_pb2.ScoredGroup]) -> list[messages_pb2.ScoredGroup]:
        """The groups that fit in one Kafka message; each other one is logged and counted as quarantined
        (``size``) and dropped: sending it would fail and crash-loop the batch (its request, committed as done,
        times out at the learner and is released again)."""
        limit = self.cfg.kafka.max_message_bytes - RECORD_OVERHEAD_BYTES
        out = []
        for g in groups:
            if (size := g.ByteSize()) > limit:
                log.error("quarantined request %s (size): its group of %d bytes does not fit kafka.max_message_bytes "
                          "%d", g.request_id, size, self.cfg.kafka.max_message_bytes)
                self.metrics.quarantined.labels(reason="size").inc()
            else:
                out.append(g)
        return out

    # -- the loop -----------------------------------------------------------------------------

    async def _on_revoked(self, partitions) -> None:
        # Let the in-flight batch publish and commit before the partitions move on, so a normal
        # rebalance does not duplicate work (bounded: a stuck batch must not block the group).
        try:
            await asyncio.wait_for(self._batch_idle.wait(), timeout=self.cfg.revoke_wait_s)
        except TimeoutError:
            log.warning("rebalance: in-flight batch still running; its prompts may be redelivered")
        if self._tracker is not None:
            self._tracker.forget(partitions)

    async def _commit(self) -> None:
        from aiokafka.errors import KafkaError

        from winnow.kafka import commit_offsets

        offsets = self._tracker.to_commit()
        owned = self._consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in owned}
        if not offsets:
            return
        try:
            await commit_offsets(self._consumer, offsets)
            self._tracker.mark_committed(offsets)
        except KafkaError as e:  # rebalanced away: the next owner re-processes (learner dedupes)
            log.warning("offset commit failed (%s); those prompts may be redelivered", e)

    async def _fetch(self, consumer) -> list[Any]:
        first = await consumer.getmany(timeout_ms=500, max_records=self.cfg.batch_prompts)
        records = [r for rs in first.values() for r in rs]
        if records and len(records) < self.cfg.batch_prompts and self.cfg.batch_wait_ms:
            deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            while len(records) < self.cfg.batch_prompts and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                more = await consumer.getmany(
                    timeout_ms=int(left * 1000), max_records=self.cfg.batch_prompts - len(records)
                )
                records += [r for rs in more.values() for r in rs]
        return records

    async def _lag_loop(self, consumer) -> None:
        from winnow.kafka import consumer_lag

        while True:
            try:
                self.metrics.consumer_lag.set(await consumer_lag(consumer))
            except Exception as e:  # metric only
                log.debug("consumer lag unavailable: %s", e)
            await asyncio.sleep(self.cfg.lag_interval_s)

    async def run(self) -> None:
        """Run until :meth:`request_stop`. Creates the topics if missing."""
        from aiokafka import TopicPartition

        from winnow.kafka import (
            OffsetTracker,
            PromptRequest,
            decode_record,
            ensure_topics,
            group_hmac_key,
            make_consumer,
            make_producer,
            send,
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
        producer = make_producer(kcfg, client_id=f"winnow-generator-{self.generator_id}")
        consumer = make_consumer(
            kcfg,
            [names.prompts],
            self.cfg.group_id,
            on_revoked=self._on_revoked,
            client_id=f"winnow-generator-{self.generator_id}",
            max_poll_interval_ms=self.cfg.max_poll_interval_ms,
        )
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
                    await self._poll_weights(weights, drain_s=1.0)
            lag_task = asyncio.create_task(self._lag_loop(consumer))
            self._running = True
            log.info(
                "generator %s consuming %s (group %s), publishing %s, weights v%d",
                self.generator_id,
                names.prompts,
                self.cfg.group_id,
                names.groups,
                self.engine.version,
            )
            while not self._stop.is_set():
                if (
                    self.cfg.weights.enabled
                    and time.monotonic() - self._last_weights_poll >= self.cfg.weights.poll_interval_s
                ):
                    await self._poll_weights(weights)
                if self._latest_ann is not None and self._latest_ann.final:
                    await self._wait_while_finished(consumer, weights, names.prompts)
                    continue
                records = await self._fetch(consumer)
                if not records:
                    continue
                pending: list[_Pending] = []
                for record in records:
                    self._tracker.track(record)
                    req = decode_record(PromptRequest, record, self._on_corrupt, max_bytes=kcfg.max_message_bytes)
                    if req is None or self.quarantine(req):
                        self._tracker.done(record)
                    else:
                        pending.append(_Pending(record, req))
                if not pending:
                    await self._commit()
                    continue
                if self.cfg.weights.enabled:
                    await self._catch_up(weights, max(p.request.release_version for p in pending))
                self._batch_idle.clear()
                self.metrics.requests_in_flight.set(len(pending))
                try:
                    groups = self.publishable(await self.process([p.request for p in pending]))
                    futures = [await send(producer, names.groups, g, wait=False, hmac_key=hmac_key) for g in groups]
                    # every group must be acknowledged before its prompt offset is committed: a
                    # delivery error raises here and the prompts are redelivered, never lost
                    await asyncio.gather(*futures)
                    self.metrics.groups_published.inc(len(groups))
                    for p in pending:
                        self._tracker.done(p.record)
                    await self._commit()
                    self.batches += 1
                except (ScoringAborted, GenerationCancelled) as e:
                    log.info("batch abandoned (%s); its prompts will be redelivered", e)
                    break
                finally:
                    self.metrics.requests_in_flight.set(0)
                    self._batch_idle.set()
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
