"""The learner's delivery bookkeeping as one pure object: no Kafka, no clock of its own, no I/O.

A prompt request's life, from release to "done" (trained or dropped), and the exactly-once
invariants the learner relies on (docs/kafka.md):

- **release**: at most ``(max_staleness + 1) * batch_groups`` requests are outstanding (admission
  control); request ids are deterministic, ``<run>-<position>-<attempt>``, so a restarted learner
  gives a position released after its last checkpoint the same id again;
- **timeout**: a request outstanding for ``request_timeout_s`` is released again under the next
  attempt's id; the old id goes into the dedupe window, so its late group is a duplicate;
- **receive**: a group whose id is done is a duplicate (and frees a re-released slot), one already
  buffered (or another attempt of a buffered position) is a duplicate; a group is trained only if its
  id is *outstanding*: released by this lineage under the position's current attempt and not done.
  Any other id is foreign, however well-formed (a forged ``<run>-<pos>-<attempt>``, an attempt that
  was superseded, a position never released). One from a policy version above the learner's is from
  the future (weights of a dead lineage): its request is released again at once. All of these are
  dropped and counted, never trained; foreign and future records are not "done" (no ledger row);
  after a restore the learner releases before it reads, so the groups of requests released after
  the checkpoint, which come back under the same deterministic ids, are outstanding again;
- **corrupt**: a group that fails the learner's checks is finished (quarantined) only if its id is outstanding;
  one that answers with another configuration's shape (another ``n``, longer responses: an earlier lineage's request
  under the same id, before a resume with new settings) has its request released again once instead;
- **judged** (dynamic sampling): a buffered group the filter would not train is finished at once (all_correct /
  all_wrong), so a batch is made of groups that train; the admission limit follows the recent keep rate;
- **stale**: a buffered group more than ``max_staleness`` versions old is dropped;
- **finish**: a done id enters the dedupe window and the ledger, leaves the outstanding set, and its
  record's offset may be committed: :meth:`RequestBook.committable` gives, per partition, the lowest
  offset not yet done (everything below is done);
- **checkpoint**: :meth:`RequestBook.state` is everything above that must survive a crash. Buffered
  groups are not done: they stay outstanding and above the committed offsets, so a crash between
  training and checkpointing re-reads them and the restored dedupe window tells new from done.

The service moves bytes around it (:mod:`winnow.learner.service`); the tests drive it directly
(tests/learner/test_book.py).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from winnow.learner.checkpoint import LearnerState
from winnow.offsets import OffsetTracker


class Outcome(StrEnum):
    """What happened to a scored group (the ``outcome`` label of ``winnow_learner_groups_total``)."""

    TRAINED = "trained"
    ALL_CORRECT = "all_correct"
    ALL_WRONG = "all_wrong"
    STALE = "stale"
    DUPLICATE = "duplicate"
    CORRUPT = "corrupt"
    FOREIGN = "foreign"
    FUTURE = "future"
    REJECTED = "rejected"
    UNAUTHENTICATED = "unauthenticated"


@dataclass(frozen=True)
class Position:
    """Where a record was read: topic, partition, offset (a plain tuple key, no Kafka types)."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass(frozen=True)
class Release:
    """A prompt request to send: data ``position`` under ``request_id`` (attempt ``attempt``)."""

    position: int
    request_id: str
    attempt: int


@dataclass
class Buffered:
    """A received group waiting for a batch."""

    request_id: str
    prompt_id: str
    policy_version: int
    where: Position
    group: Any
    """The payload the trainer consumes (:class:`~winnow.learner.batch.GroupData`)."""
    message: Any = None
    """The record as received (for the sample log), if the caller keeps it."""


class RequestBook:
    """Release, attempts, timeouts, dedupe, buffering, staleness drops and finishing (see the module docstring).

    Time is passed in (``now``, monotonic seconds) so every invariant is testable without sleeping.
    """

    def __init__(
        self,
        *,
        batch_groups: int,
        max_staleness: int,
        request_timeout_s: float,
        dedupe_capacity: int,
        state: LearnerState,
        now: float = 0.0,
        max_oversample: float = 1.0,
    ) -> None:
        if not state.run_id:
            raise ValueError("state.run_id is empty: request ids need the run's id")
        self.batch_groups = batch_groups
        self.max_staleness = max_staleness
        self.request_timeout_s = request_timeout_s
        self.dedupe_capacity = dedupe_capacity
        self.state = state
        self._seen: OrderedDict[str, None] = OrderedDict.fromkeys(state.seen[-dedupe_capacity:])
        self._released_at = dict.fromkeys(state.unconsumed, now)
        self.buffer: OrderedDict[str, Buffered] = OrderedDict()
        self._offsets = OffsetTracker({(topic, int(p)): int(off) for topic, parts in state.offsets.items()
                                       for p, off in parts.items()})
        self.max_oversample = max_oversample
        self._judged: deque[bool] = deque(maxlen=4 * batch_groups)  # recent arrivals: kept by the filter or not
        self._dropped_for_batch = 0  # groups dynamic sampling dropped since the last batch was taken
        self._asked_again: set[int] = set()  # positions released again for a group of another shape (once each)
        self.counts: Counter[str] = Counter()
        self.ledger_rows: list[dict[str, str]] = []
        """Finished groups since the last :meth:`take_ledger_rows` (written just before a checkpoint)."""

    # -- release ------------------------------------------------------------------------------

    @property
    def admission_limit(self) -> int:
        """Requests outstanding at most: ``(max_staleness + 1) * batch_groups``, and with dynamic sampling that over
        the recent keep rate, capped at ``max_oversample`` times it (``max_oversample`` 1: no dynamic sampling)."""
        base = (self.max_staleness + 1) * self.batch_groups
        return math.ceil(base * min(self.max_oversample, 1.0 / self.keep_rate))

    def _may_release(self) -> bool:
        """Below the admission limit, and (dynamic sampling) the groups expected to be kept stay within the
        staleness budget: the buffered ones (kept on arrival) plus the keep rate times those still out, below
        ``(max_staleness + 1) * batch_groups``. The limit alone over-releases when the keep rate rises above its
        recent estimate (a streak of kept groups): the extra kept groups wait for a batch past ``max_staleness``
        and are dropped as stale, sampled for nothing. Without dynamic sampling the two rules are one."""
        if self.outstanding >= self.admission_limit:
            return False
        if self.max_oversample <= 1.0:
            return True
        in_flight = self.outstanding - len(self.buffer)
        return len(self.buffer) + self.keep_rate * in_flight < (self.max_staleness + 1) * self.batch_groups

    @property
    def keep_rate(self) -> float:
        """Fraction of the recent groups (the last ``4 * batch_groups`` judged on arrival) the filter keeps, with one
        kept group of prior (1.0 before any arrival)."""
        return (sum(self._judged) + 1) / (len(self._judged) + 1)

    @property
    def drop_budget(self) -> int:
        """Groups dynamic sampling may drop while one batch fills: ``(max_oversample - 1) * batch_groups``. Past it the
        batch fills with whatever comes (the trainer's filter decides, a step with nothing to train still advances
        the version), so a policy that never produces a kept group cannot stall the run (DAPO's max_num_gen_batches)."""
        return round((self.max_oversample - 1.0) * self.batch_groups)

    def judged(self, request_id: str, prompt_id: str, kept: bool, outcome: Outcome | str) -> bool:
        """Dynamic sampling: the buffered group ``request_id`` was judged on arrival. Kept (or the batch's
        :attr:`drop_budget` spent): it stays for a batch. Not kept: it leaves the buffer and is finished with
        ``outcome`` (its slot goes to the next position). Returns whether it stays."""
        self._judged.append(kept)
        if kept or self._dropped_for_batch >= self.drop_budget:
            return True
        self._dropped_for_batch += 1
        b = self.buffer.pop(request_id)
        self.finish(request_id, prompt_id, b.where, outcome)
        return False

    @property
    def outstanding(self) -> int:
        return len(self.state.unconsumed)

    def request_id(self, position: int, attempt: int) -> str:
        return f"{self.state.run_id}-{position}-{attempt}"

    def releases(self, now: float, *, more: bool = True) -> tuple[list[Release], int]:
        """The requests to send now: new positions up to the admission limit (when ``more``), then
        re-releases of timed-out ones. Returns ``(releases, timed_out)``; every returned release is
        already outstanding."""
        out = []
        while more and self._may_release():
            position = self.state.next_position
            self.state.next_position += 1
            out += self._release(position, 0, now)
        timed_out = 0
        for rid, position in list(self.state.unconsumed.items()):
            if rid in self.buffer or now - self._released_at.get(rid, now) < self.request_timeout_s:
                continue
            del self.state.unconsumed[rid]
            self._released_at.pop(rid, None)
            self._remember(rid)  # the late group, if it comes, is a duplicate of the re-release
            attempt = self.state.attempts.get(str(position), 0) + 1
            timed_out += 1
            out += self._release(position, attempt, now)
        return out, timed_out

    def resume_releases(self) -> list[Release]:
        """After a restore: every outstanding request of the checkpoint again, under its own id."""
        out = []
        for rid, position in self.state.unconsumed.items():
            attempt = self.state.attempts.get(str(position), 0)
            if rid == self.request_id(position, attempt) and rid not in self.buffer:
                out.append(Release(position, rid, attempt))
        return out

    def _release(self, position: int, attempt: int, now: float) -> list[Release]:
        rid = self.request_id(position, attempt)
        if attempt:
            self.state.attempts[str(position)] = attempt
        if rid in self._seen:  # done before a crash (same deterministic id): nothing to send
            return []
        self.state.unconsumed[rid] = position
        self._released_at[rid] = now
        if rid in self.buffer:  # its group is already here
            return []
        self.state.prompts_released += 1
        return [Release(position, rid, attempt)]

    # -- receive ------------------------------------------------------------------------------

    def track(self, where: Position) -> None:
        """A record was read at ``where`` (its offset is pending until finished)."""
        self._offsets.track(where)

    def duplicate(self, where: Position, request_id: str) -> bool:
        """True (and the record is finished as a duplicate) if ``request_id`` is done or already buffered.
        A done id also frees the slot of its re-release, which is then never needed."""
        if request_id not in self._seen and request_id not in self.buffer:
            return False
        if request_id not in self.buffer:
            position = self.state.unconsumed.pop(request_id, None)
            self._released_at.pop(request_id, None)
            if position is not None:
                self.state.attempts.pop(str(position), None)
        self.done(where, Outcome.DUPLICATE)
        return True

    def receive(self, where: Position, group: Any, prompt_id: str, oldest_version: int, newest_version: int,
                version: int, message: Any = None) -> Outcome | None:
        """Admit a checked, non-duplicate group (``group.request_id``) read at ``where`` whose tokens come from
        policy versions ``oldest_version..newest_version`` while the learner holds ``version``: None if it
        was buffered, else the outcome of dropping it. Foreign and future groups are not "done" (a request of
        ours stays outstanding, to time out and be released again; a foreign id stays out of the ledger)."""
        request_id = group.request_id
        if not self.released_by_this_run(request_id):
            self.done(where, Outcome.FOREIGN)
            return Outcome.FOREIGN
        if newest_version > version:  # sampled by weights this lineage never had: ask again now
            self._released_at[request_id] = float("-inf")
            self.done(where, Outcome.FUTURE)
            return Outcome.FUTURE
        position = self.state.unconsumed[request_id]
        if any(self.state.unconsumed.get(b) == position for b in self.buffer):  # never two attempts of one position
            self.done(where, Outcome.DUPLICATE)
            return Outcome.DUPLICATE
        self.buffer[request_id] = Buffered(request_id, prompt_id, oldest_version, where, group, message)
        return None

    def released_by_this_run(self, request_id: str) -> bool:
        """Outstanding: released by this lineage under its position's current attempt, and not done. The
        released ids are the book's state (checkpointed); an id's shape proves nothing (anyone who reads the
        prompts topic can write one)."""
        return request_id in self.state.unconsumed

    def drop(self, where: Position, request_id: str, prompt_id: str, outcome: Outcome) -> Outcome:
        """A group that will never be trained (corrupt): finish it if its id is outstanding (quarantined: its position
        is done, with a ledger row); any other id only has its record done. Finishing an id that is not outstanding
        would put it in the dedupe window, and a position released later under that id would be taken for done and
        never sent: anyone could silence a position with one malformed record under a guessed id."""
        if not self.released_by_this_run(request_id):
            self.done(where, outcome)
            return outcome
        self.finish(request_id, prompt_id, where, outcome)
        return outcome

    def ask_again(self, where: Position, request_id: str, prompt_id: str, outcome: Outcome) -> bool:
        """A group that answers its request with another configuration's shape (another ``n`` or more response tokens
        than asked: a request of an earlier lineage under the same deterministic id, made before the learner was
        resumed with new settings). If its id is outstanding and its position was not asked again for this already,
        the request is released again at once under the next attempt (as a group from the future is) and True is
        returned; otherwise the group is dropped (:meth:`drop`) and False returned. The record is done either way."""
        position = self.state.unconsumed.get(request_id)
        if position is None or position in self._asked_again:
            self.drop(where, request_id, prompt_id, outcome)
            return False
        self._asked_again.add(position)
        self._released_at[request_id] = float("-inf")  # the next releases() times it out and releases it again
        self.done(where, outcome)
        return True

    def done(self, where: Position, outcome: Outcome) -> None:
        """A record that carries no trainable group for a known id (undecodable, a duplicate)."""
        self._offsets.done(where)
        self.counts[outcome] += 1

    # -- batches ------------------------------------------------------------------------------

    def drop_stale(self, version: int) -> list[Buffered]:
        """Drop (and finish) buffered groups more than ``max_staleness`` versions behind ``version``."""
        stale = [b for b in self.buffer.values() if version - b.policy_version > self.max_staleness]
        for b in stale:
            del self.buffer[b.request_id]
            self.finish(b.request_id, b.prompt_id, b.where, Outcome.STALE)
        return stale

    def take_batch(self) -> list[Buffered] | None:
        """The ``batch_groups`` oldest buffered groups, or None if fewer are buffered."""
        if len(self.buffer) < self.batch_groups:
            return None
        self._dropped_for_batch = 0
        return [self.buffer.popitem(last=False)[1] for _ in range(self.batch_groups)]

    def finish(self, request_id: str, prompt_id: str, where: Position, outcome: Outcome | str) -> None:
        """``request_id`` is done (trained or dropped): remember it, free its slot, release its offset."""
        self._close(request_id, prompt_id, Outcome(outcome))
        self.done(where, Outcome(outcome))

    def reject(self, release: Release, prompt_id: str) -> None:
        """A released request that is not sent (its prompt failed the learner's check): done, never trained;
        the next position takes its slot."""
        self._close(release.request_id, prompt_id, Outcome.REJECTED)
        self.counts[Outcome.REJECTED] += 1

    def _close(self, request_id: str, prompt_id: str, outcome: Outcome) -> None:
        self._remember(request_id)
        self.ledger_rows.append({"request_id": request_id, "prompt_id": prompt_id, "outcome": str(outcome)})
        position = self.state.unconsumed.pop(request_id, None)
        if position is not None:
            self.state.attempts.pop(str(position), None)
        self._released_at.pop(request_id, None)

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        self._seen.move_to_end(request_id)
        while len(self._seen) > self.dedupe_capacity:
            self._seen.popitem(last=False)

    def is_done(self, request_id: str) -> bool:
        return request_id in self._seen

    # -- checkpoint and commit ----------------------------------------------------------------

    def committable(self) -> dict[tuple[str, int], int]:
        """Per partition, the next offset to resume from: the lowest not yet done, else one past the highest read."""
        return self._offsets.committable()

    def to_commit(self, owned: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """The committable offsets that moved since the last :meth:`mark_committed` (of ``owned`` partitions)."""
        return self._offsets.to_commit(owned)

    def rewind(self, tp: tuple[str, int], offset: int) -> None:
        """The partition ``tp`` is read again from ``offset`` (below what was checkpointed: the broker lost
        records): forget its pending offsets and resume committing from there."""
        self._offsets.rewind(tp, offset)

    def mark_committed(self, offsets: dict[tuple[str, int], int]) -> None:
        self._offsets.mark_committed(offsets)

    def state_for_checkpoint(self, version: int) -> LearnerState:
        """The resumable state at ``version``: outstanding requests (buffered ones included), the dedupe
        window, and the offsets below which every group is done."""
        s = self.state
        s.version = version
        s.seen = list(self._seen)
        s.offsets = {}
        for (topic, partition), off in self.committable().items():
            s.offsets.setdefault(topic, {})[str(partition)] = off
        return s

    def take_ledger_rows(self) -> list[dict[str, str]]:
        rows, self.ledger_rows = self.ledger_rows, []
        return rows
