"""The generator's decisions as one pure object: no Kafka, no clock of its own, no engine, no I/O on file contents.

The service (:mod:`winnow.generator.service`) moves bytes around it; the tests drive it directly
(tests/generator/test_state.py). Time is passed in (``now``, monotonic seconds).

Weights (the compacted weights topic, read between batches):

- **announced**: the last valid announcement read wins (:meth:`GeneratorState.announced`); one marked ``final``
  means the run is finished: stop asking for work until a newer, non-final one (:attr:`~GeneratorState.finished`);
- **what to load next**: the latest announcement, unless it is the loaded one (its version, and its sha256 when the
  loaded weights came from an announcement: a learner resumed from a checkpoint publishes its own weights under
  version numbers a dead lineage used) or it was rejected (:meth:`~GeneratorState.to_load`);
- **refusal**, before any file is opened: a version outside ``[0, 2^63)`` or more than ``max_version_jump`` above
  the loaded one (``version``), a URI naming nothing inside the weight store ``root`` (``location``); a refused
  announcement is rejected, never retried (:meth:`~GeneratorState.locate`);
- **rejected**: a refused announcement, a sha256 mismatch or a file that does not load is remembered by
  ``(version, sha256)`` and skipped at later polls (:meth:`~GeneratorState.reject`); a file not there yet is not
  rejected: it is retried at the next poll (shared volumes can lag);
- **poll**: every ``poll_interval_s`` (:meth:`~GeneratorState.poll_due`); **catch-up**: before a batch whose
  requests were released at a newer version than the loaded one, wait (up to a deadline) for it
  (:meth:`~GeneratorState.catching_up`).

Batches:

- **quarantine**: a poison request (``n`` above ``max_group_size``, fields too large, sampling out of bounds, a group
  that could not be published, a prompt too long) is refused with a reason of :data:`QUARANTINE_REASONS`, the cheap
  bounds first, the tokenizer last, nothing allocated in proportion to what the request asks for
  (:meth:`~GeneratorState.poison`);
- **buckets**: requests with equal ``(n, sampling)`` share one engine call (:func:`buckets`);
- **size**: a group larger than a Kafka message (less :data:`RECORD_OVERHEAD_BYTES`) is dropped, not retried
  (:meth:`~GeneratorState.split_publishable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pydantic import ValidationError

from winnow.sampling import SamplingConfig, request_sampling
from winnow.weight_store import resolve_weight_uri

if TYPE_CHECKING:
    from winnow.generator.config import GeneratorConfig
    from winnow.v1.messages_pb2 import PromptRequest, ScoredGroup, WeightAnnouncement

QUARANTINE_REASONS = ("sampling", "prompt", "n", "size")
"""Labels of ``winnow_generator_quarantined_requests_total``."""
REFUSAL_REASONS = ("location", "version")
"""Labels of ``winnow_generator_weight_refusals_total``."""
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


class Refusal(NamedTuple):
    """Why a request or an announcement is refused: a metric label and a detail for the log."""

    reason: str
    detail: str


def version_refusal(version: int, current: int, max_jump: int) -> str | None:
    """Why an announced weight ``version`` must not be loaded over ``current``, or None: negative, beyond
    int63, or more than ``max_jump`` above ``current``."""
    if not 0 <= version < 2**63:
        return f"version {version} is outside [0, 2^63)"
    if version - current > max_jump:
        return f"version {version} is more than weights.max_version_jump={max_jump} above the loaded v{current}"
    return None


def buckets(requests: Sequence[PromptRequest], samplings: Sequence[SamplingConfig]) -> dict[tuple[int, str], list[int]]:
    """Batch positions by ``(n, sampling)``, in order of first appearance: each bucket is one engine call."""
    out: dict[tuple[int, str], list[int]] = {}
    for i, (r, s) in enumerate(zip(requests, samplings, strict=True)):
        out.setdefault((int(r.n) or 1, s.model_dump_json()), []).append(i)
    return out


class GeneratorState:
    """What a generator knows and decides between Kafka calls (see the module docstring)."""

    def __init__(
        self,
        *,
        sampling: SamplingConfig,
        max_group_size: int,
        max_prompt_tokens: int,
        max_message_bytes: int,
        poll_interval_s: float,
        max_version_jump: int,
        weights_root: str = "",
    ) -> None:
        self.sampling = sampling
        self.max_group_size = max_group_size
        self.max_prompt_tokens = max_prompt_tokens
        self.max_message_bytes = max_message_bytes
        self.poll_interval_s = poll_interval_s
        self.max_version_jump = max_version_jump
        self.weights_root = weights_root
        self.latest: WeightAnnouncement | None = None
        """The last valid ``WeightAnnouncement`` read (None before any)."""
        self.rejected: set[tuple[int, str]] = set()
        """``(version, sha256)`` of announcements refused or failed: never tried again."""
        self.last_poll = 0.0
        self.loaded_sha256 = ""
        """sha256 of the announced file the engine holds ("" for the weights it started with)."""

    @classmethod
    def from_config(cls, cfg: GeneratorConfig) -> GeneratorState:
        """The state of a generator configured by ``cfg`` (a :class:`~winnow.generator.config.GeneratorConfig`)."""
        return cls(sampling=cfg.sampling, max_group_size=cfg.max_group_size, max_prompt_tokens=cfg.max_prompt_tokens,
                   max_message_bytes=cfg.kafka.max_message_bytes, poll_interval_s=cfg.weights.poll_interval_s,
                   max_version_jump=cfg.weights.max_version_jump, weights_root=cfg.weights.root)

    # -- weights ------------------------------------------------------------------------------

    def poll_due(self, now: float) -> bool:
        return now - self.last_poll >= self.poll_interval_s

    def polled(self, now: float) -> None:
        self.last_poll = now

    def announced(self, ann: WeightAnnouncement) -> None:
        """A valid announcement was read (they are read in log order: the last one wins)."""
        self.latest = ann

    @property
    def finished(self) -> bool:
        """The latest announcement is the run's final one: ask for no work until a newer one."""
        return self.latest is not None and bool(self.latest.final)

    def to_load(self, loaded: int) -> WeightAnnouncement | None:
        """The announcement to load over the ``loaded`` version, or None: the latest, unless it is what is loaded or
        was rejected. What is loaded is the version and, once weights were loaded from an announcement, its sha256:
        the same version under another file is another lineage's weights (a learner restored from a checkpoint
        announces its weights under numbers the dead lineage used, possibly in one poll with its older ones)."""
        ann = self.latest
        if ann is None or (ann.version, ann.sha256) in self.rejected:
            return None
        if ann.version == loaded and (not self.loaded_sha256 or ann.sha256 == self.loaded_sha256):
            return None
        return ann

    def loaded(self, ann: WeightAnnouncement) -> None:
        """The engine now holds ``ann``'s weights."""
        self.loaded_sha256 = ann.sha256

    def locate(self, ann: WeightAnnouncement, loaded: int) -> Path | Refusal:
        """The file to load ``ann`` from over the ``loaded`` version, or why it is refused without opening anything
        (its version, then its location); a refused announcement is rejected."""
        why = version_refusal(int(ann.version), loaded, self.max_version_jump)
        if why is not None:
            return self._refuse(ann, "version", why)
        try:
            return resolve_weight_uri(ann.uri, self.weights_root)
        except ValueError as e:
            return self._refuse(ann, "location", str(e))

    def _refuse(self, ann: WeightAnnouncement, reason: str, detail: str) -> Refusal:
        self.reject(ann)
        return Refusal(reason, detail)

    def reject(self, ann: WeightAnnouncement) -> None:
        """Never load ``ann`` (its version under its sha256) again: refused, wrong sha256, or did not load."""
        self.rejected.add((ann.version, ann.sha256))

    @staticmethod
    def catching_up(loaded: int, wanted: int, now: float, deadline: float) -> bool:
        """Keep waiting for weights: the ``loaded`` version is below the ``wanted`` one and ``deadline`` is ahead."""
        return loaded < wanted and now < deadline

    # -- batches ------------------------------------------------------------------------------

    def request_sampling(self, req: PromptRequest) -> SamplingConfig:
        """The sampling of ``req`` over the configured defaults (pydantic's ValidationError when out of bounds)."""
        return request_sampling(self.sampling, req)

    def poison(self, req: PromptRequest, prompt_tokens: Callable[[PromptRequest], int]) -> Refusal | None:
        """Why ``req`` must not be generated (a quarantine reason and a detail), or None. ``prompt_tokens(req)``
        counts the prompt's tokens (called last, only for a prompt short enough in characters; ValueError or
        UnicodeError from it refuse the prompt)."""
        n = int(req.n) or 1
        if n > self.max_group_size:
            return Refusal("n", f"n={n} > max_group_size {self.max_group_size}")
        if len(req.verifier_options) > MAX_VERIFIER_OPTIONS:
            return Refusal("size", f"{len(req.verifier_options)} verifier options > {MAX_VERIFIER_OPTIONS}")
        side = sum(len(x.encode("utf-8", "replace")) for x in (req.request_id, req.prompt_id, req.task, req.gold))
        side += sum(len(k) + len(v) for k, v in req.verifier_options.items())
        if side > MAX_SIDE_BYTES:
            return Refusal("size", f"{side} bytes of ids, task, gold and verifier options > {MAX_SIDE_BYTES}")
        try:
            sampling = self.request_sampling(req)
        except ValidationError as e:
            return Refusal("sampling", str(e)[:500])
        least = n * sampling.max_new_tokens * MIN_WIRE_BYTES_PER_TOKEN
        if least > self.max_message_bytes:
            return Refusal("size", f"n={n} x max_new_tokens={sampling.max_new_tokens} tokens need up to {least} "
                                   f"bytes, more than kafka.max_message_bytes {self.max_message_bytes}")
        chars = len(req.problem) + sum(len(m.role) + len(m.content) for m in req.messages)
        if chars > self.max_prompt_tokens * MAX_CHARS_PER_TOKEN or len(req.messages) > self.max_prompt_tokens:
            return Refusal("prompt", f"{chars} characters in {len(req.messages)} messages cannot fit "
                                     f"max_prompt_tokens {self.max_prompt_tokens}")
        try:
            tokens = prompt_tokens(req)
        except (ValueError, UnicodeError) as e:
            return Refusal("prompt", str(e)[:500])
        if tokens > self.max_prompt_tokens:
            return Refusal("prompt", f"{tokens} prompt tokens > max_prompt_tokens {self.max_prompt_tokens}")
        return None

    def split_publishable(
        self, groups: Sequence[ScoredGroup]
    ) -> tuple[list[ScoredGroup], list[tuple[ScoredGroup, int]]]:
        """``(fit, too_large)``: the groups that fit in one Kafka message, and ``(group, bytes)`` of each other one
        (sending it would fail and crash-loop the batch; its request, committed as done, times out at the learner
        and is released again)."""
        limit = self.max_message_bytes - RECORD_OVERHEAD_BYTES
        fit, too_large = [], []
        for g in groups:
            if (size := g.ByteSize()) > limit:
                too_large.append((g, size))
            else:
                fit.append(g)
        return fit, too_large
