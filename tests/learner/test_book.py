"""The request book's exactly-once invariants, one by one, without a broker (learner/book.py)."""

from __future__ import annotations

from types import SimpleNamespace

from winnow.learner.book import Outcome, Position, RequestBook
from winnow.learner.checkpoint import LearnerState

T = "w.groups"


def book(state: LearnerState | None = None, *, batch=2, staleness=1, timeout=10.0, capacity=100, now=0.0):
    return RequestBook(batch_groups=batch, max_staleness=staleness, request_timeout_s=timeout,
                       dedupe_capacity=capacity, state=state or LearnerState(run_id="run"), now=now)


def checkpointed(b: RequestBook, version: int) -> LearnerState:
    """What a checkpoint holds (a copy through JSON, as on disk)."""
    return LearnerState.from_json(b.state_for_checkpoint(version).to_json())


class Stream:
    """A partition of the groups topic: every record gets the next offset."""

    def __init__(self, partition: int = 0) -> None:
        self.partition, self.offset = partition, 0

    def deliver(self, b: RequestBook, rid: str, *, version: int = 0, policy_version: int = 0, newest=None):
        where = Position(T, self.partition, self.offset)
        self.offset += 1
        b.track(where)
        if b.duplicate(where, rid):
            return Outcome.DUPLICATE
        group = SimpleNamespace(request_id=rid)
        newest = policy_version if newest is None else newest
        return b.receive(where, group, f"p-{rid}", policy_version, newest, version)


def train(b: RequestBook, outcome: str = "trained") -> list[str]:
    batch = b.take_batch()
    assert batch is not None
    for g in batch:
        b.finish(g.request_id, g.prompt_id, g.where, outcome)
    return [g.request_id for g in batch]


def test_admission_control_and_deterministic_ids():
    b = book(batch=2, staleness=1)  # at most (1 + 1) * 2 = 4 outstanding
    releases, timed_out = b.releases(now=0.0)
    assert [r.request_id for r in releases] == ["run-0-0", "run-1-0", "run-2-0", "run-3-0"] and timed_out == 0
    assert b.releases(now=1.0) == ([], 0)  # full
    s = Stream()
    assert s.deliver(b, "run-0-0") is None and s.deliver(b, "run-1-0") is None
    assert train(b) == ["run-0-0", "run-1-0"]
    assert [r.request_id for r in b.releases(now=2.0)[0]] == ["run-4-0", "run-5-0"]  # two slots freed
    assert b.releases(now=3.0, more=False) == ([], 0)
    assert b.state.prompts_released == 6


def test_rerelease_after_timeout_and_late_original_is_a_duplicate():
    b = book(batch=1, staleness=0, timeout=10.0)
    assert [r.request_id for r in b.releases(now=0.0)[0]] == ["run-0-0"]
    assert b.releases(now=9.9) == ([], 0)
    releases, timed_out = b.releases(now=10.0)
    assert [(r.request_id, r.attempt, r.position) for r in releases] == [("run-0-1", 1, 0)] and timed_out == 1
    assert b.state.unconsumed == {"run-0-1": 0} and b.state.attempts == {"0": 1}
    s = Stream()
    assert s.deliver(b, "run-0-1") is None  # the re-release answers first
    assert s.deliver(b, "run-0-0") == Outcome.DUPLICATE  # the late original: never trained
    assert train(b) == ["run-0-1"]
    assert b.state.unconsumed == {} and b.state.attempts == {}
    assert b.counts[Outcome.DUPLICATE] == 1 and b.counts[Outcome.TRAINED] == 1


def test_done_group_frees_the_slot_of_its_rerelease():
    """The original arrives after its re-release was sent but first: trained; the re-release's own group is then
    a duplicate, and so is the original id if it comes again."""
    b = book(batch=1, staleness=0, timeout=10.0)
    b.releases(now=0.0)
    b.releases(now=10.0)  # run-0-0 timed out -> run-0-1
    s = Stream()
    assert s.deliver(b, "run-0-0") == Outcome.DUPLICATE  # the timed-out id is in the window
    assert s.deliver(b, "run-0-1") is None
    train(b)
    assert s.deliver(b, "run-0-1") == Outcome.DUPLICATE  # a generator retry published it twice
    assert b.outstanding == 0


def test_buffered_duplicate_is_not_buffered_twice():
    b = book(batch=2)
    b.releases(now=0.0)
    s = Stream()
    assert s.deliver(b, "run-0-0") is None
    assert s.deliver(b, "run-0-0") == Outcome.DUPLICATE
    assert len(b.buffer) == 1


def test_stale_groups_are_dropped_and_done():
    b = book(batch=2, staleness=1)
    b.releases(now=0.0)
    s = Stream()
    s.deliver(b, "run-0-0", version=3, policy_version=1)  # 3 - 1 = 2 > 1: stale
    s.deliver(b, "run-1-0", version=3, policy_version=2)  # 1 behind: fine
    assert [g.request_id for g in b.drop_stale(version=3)] == ["run-0-0"]
    assert list(b.buffer) == ["run-1-0"] and b.is_done("run-0-0") and "run-0-0" not in b.state.unconsumed
    assert b.take_ledger_rows() == [{"request_id": "run-0-0", "prompt_id": "p-run-0-0", "outcome": "stale"}]


def test_foreign_and_future_groups_are_dropped_but_not_done():
    b = book(batch=1)
    b.releases(now=0.0)
    s = Stream()
    assert s.deliver(b, "other-run-0-0") == Outcome.FOREIGN
    assert s.deliver(b, "run-0-0", version=2, policy_version=1, newest=9) == Outcome.FUTURE
    assert not b.is_done("other-run-0-0") and not b.is_done("run-0-0")
    assert b.take_ledger_rows() == [] and b.buffer == {}
    assert b.committable() == {(T, 0): 2}  # both records are passed (nothing pending)
    # a future group was sampled by weights of a dead lineage: its request is released again at once,
    # not after request_timeout_s (issue 22, item 3: the livelock after a crash before the first checkpoint)
    releases, timed_out = b.releases(now=0.5)
    assert [r.request_id for r in releases] == ["run-0-1"] and timed_out == 1
    assert s.deliver(b, "run-0-0") == Outcome.DUPLICATE  # the superseded attempt, if it still comes


def test_forged_well_formed_ids_are_foreign():
    """Issue 22, item 1: the run id is readable on the prompts topic, so ``<run>-<digits>-<digits>`` proves
    nothing. Only outstanding ids (released by this lineage, current attempt) are trained."""
    b = book(batch=2, staleness=0)  # admission limit 2: run-0-0, run-1-0
    b.releases(now=0.0)
    s = Stream()
    assert s.deliver(b, "run-7-0") == Outcome.FOREIGN  # a position never released
    assert s.deliver(b, "run-0-3") == Outcome.FOREIGN  # a position released, under another attempt
    assert s.deliver(b, "run-00-0") == Outcome.FOREIGN  # the same position spelled differently
    assert s.deliver(b, "run-0-0") is None and s.deliver(b, "run-1-0") is None
    assert [g.request_id for g in b.take_batch()] == ["run-0-0", "run-1-0"]
    assert b.counts[Outcome.FOREIGN] == 3


def test_a_corrupt_group_under_an_id_not_outstanding_silences_no_position():
    """A malformed group under an id this lineage has not released (a position not yet released, an attempt not yet
    made) is not "done": that position is still released, sent and trained, and no ledger row names the id."""
    b = book(batch=1, staleness=0, timeout=10.0)  # admission limit 1
    b.releases(now=0.0)  # run-0-0
    s = Stream()
    for rid in ("run-1-0", "run-0-1"):  # the next position; the next attempt of the outstanding one
        where = Position(T, 0, s.offset)
        s.offset += 1
        b.track(where)
        assert not b.duplicate(where, rid)
        assert b.drop(where, rid, f"p-{rid}", Outcome.CORRUPT) == Outcome.CORRUPT
    assert b.counts[Outcome.CORRUPT] == 2 and b.take_ledger_rows() == []
    assert not b.is_done("run-1-0") and not b.is_done("run-0-1")
    assert s.deliver(b, "run-0-0") is None and train(b) == ["run-0-0"]
    assert [r.request_id for r in b.releases(now=1.0)[0]] == ["run-1-0"]  # sent, not taken for done
    assert s.deliver(b, "run-1-0") is None and train(b) == ["run-1-0"]
    assert [r["request_id"] for r in b.take_ledger_rows()] == ["run-0-0", "run-1-0"]


def test_a_group_of_another_shape_asks_its_request_again_once():
    """A group answering with another ``n`` (a resumed learner with new settings reads the old lineage's group under
    the same id): its request is released again at once under the next attempt; a second such group for the position
    quarantines it (finished as corrupt), so a generator that cannot answer cannot loop the learner."""
    b = book(batch=1, staleness=0, timeout=100.0)
    b.releases(now=0.0)  # run-0-0
    s = Stream()
    where = Position(T, 0, s.offset)
    s.offset += 1
    b.track(where)
    assert b.ask_again(where, "run-0-0", "p-0", Outcome.CORRUPT) is True
    assert not b.is_done("run-0-0") and b.take_ledger_rows() == []
    releases, timed_out = b.releases(now=1.0)  # long before the 100 s timeout
    assert [r.request_id for r in releases] == ["run-0-1"] and timed_out == 1
    where = Position(T, 0, s.offset)
    s.offset += 1
    b.track(where)
    assert b.ask_again(where, "run-0-1", "p-0", Outcome.CORRUPT) is False  # twice: quarantined
    assert b.is_done("run-0-1") and [r["outcome"] for r in b.take_ledger_rows()] == ["corrupt"]
    assert [r.request_id for r in b.releases(now=2.0)[0]] == ["run-1-0"]  # its slot goes to the next position
    where = Position(T, 0, s.offset)
    s.offset += 1
    b.track(where)
    assert b.ask_again(where, "run-9-0", "p-9", Outcome.CORRUPT) is False  # not ours: only the record is done
    assert not b.is_done("run-9-0") and b.counts[Outcome.CORRUPT] == 3
    assert b.committable() == {(T, 0): 3}


def test_a_rereleased_position_is_trained_once_after_a_restore():
    """Issue 22, item 2: attempt 0 times out and attempt 1 is released, then the learner restores a checkpoint
    taken before the timeout; both attempts' groups arrive. One position, one trained group."""
    b = book(batch=1, staleness=0, timeout=10.0)
    b.releases(now=0.0)  # run-0-0
    state = checkpointed(b, 0)
    assert [r.request_id for r in b.releases(now=11.0)[0]] == ["run-0-1"]  # then a crash
    r = book(state, batch=1, staleness=0, now=20.0)
    r.releases(now=20.0)  # the restored learner releases before it reads: run-0-0 again (outstanding)
    s = Stream()
    assert s.deliver(r, "run-0-1") == Outcome.FOREIGN  # the dead lineage's attempt
    assert s.deliver(r, "run-0-0") is None
    assert [g.request_id for g in r.take_batch()] == ["run-0-0"] and r.take_batch() is None
    # and in one book: a late attempt-0 group never joins its attempt-1 group in a batch
    b2 = book(batch=2, staleness=1, timeout=10.0)
    b2.releases(now=0.0)
    b2.releases(now=11.0)  # every request re-released under attempt 1
    s2 = Stream()
    assert s2.deliver(b2, "run-0-0") == Outcome.DUPLICATE and s2.deliver(b2, "run-0-1") is None
    assert b2.take_batch() is None  # one group of position 0 buffered, not two


def test_offsets_commit_only_below_groups_that_are_done():
    b = book(batch=1, staleness=2)
    b.releases(now=0.0)
    s = Stream()
    for rid in ("run-0-0", "run-1-0", "run-2-0"):
        s.deliver(b, rid)
    assert b.committable() == {(T, 0): 0}  # nothing done yet
    first = b.take_batch()[0]
    b.finish(first.request_id, first.prompt_id, first.where, "all_wrong")
    assert b.to_commit() == {(T, 0): 1}
    b.mark_committed({(T, 0): 1})
    assert b.to_commit() == {}
    assert b.to_commit(owned=set()) == {}


def test_resume_with_outstanding_requests():
    """A checkpoint with outstanding requests: the restored book re-releases them under the same ids,
    releases new positions after them, and recognises the groups done before the checkpoint."""
    b = book(batch=2, staleness=0)
    b.releases(now=0.0)  # run-0-0, run-1-0
    s = Stream()
    s.deliver(b, "run-0-0")
    s.deliver(b, "run-1-0")
    train(b)
    b.releases(now=1.0)  # run-2-0, run-3-0 outstanding
    state = checkpointed(b, version=1)
    assert state.unconsumed == {"run-2-0": 2, "run-3-0": 3} and state.seen == ["run-0-0", "run-1-0"]
    assert state.offsets == {T: {"0": 2}}

    r = book(state, batch=2, staleness=0, now=100.0)
    assert [x.request_id for x in r.resume_releases()] == ["run-2-0", "run-3-0"]
    assert r.releases(now=100.0) == ([], 0)  # the admission limit still holds
    assert Stream().deliver(r, "run-0-0") == Outcome.DUPLICATE  # re-read below the commit: done before
    assert r.committable() == {(T, 0): 2}


def test_crash_between_train_and_checkpoint():
    """Trained after the last checkpoint, then a crash: the restored book has those requests outstanding again,
    their groups (re-read from the committed offset) are new to it and trained once more in the lineage that
    survives; what the checkpoint already holds as done stays a duplicate."""
    b = book(batch=1, staleness=1)
    b.releases(now=0.0)  # run-0-0, run-1-0
    s = Stream()
    s.deliver(b, "run-0-0")
    train(b)
    state = checkpointed(b, version=1)  # run-0-0 done and checkpointed
    s.deliver(b, "run-1-0")
    train(b)  # version 2, never checkpointed: lost in the crash
    r = book(state, batch=1, staleness=1)
    replay = Stream()
    replay.offset = state.offsets[T]["0"]  # the consumer seeks to the checkpointed offset
    assert replay.offset == 1
    assert replay.deliver(r, "run-1-0", version=1) is None  # new to the restored state
    assert train(r) == ["run-1-0"]
    assert Stream().deliver(r, "run-0-0") == Outcome.DUPLICATE


def test_dedupe_window_is_bounded_and_checkpointed():
    b = book(batch=1, staleness=3, capacity=2)
    b.releases(now=0.0)
    s = Stream()
    for rid in ("run-0-0", "run-1-0", "run-2-0"):
        s.deliver(b, rid)
        train(b)
    assert checkpointed(b, 3).seen == ["run-1-0", "run-2-0"]  # the oldest id fell out of the window


def test_a_position_released_before_a_crash_but_after_the_checkpoint_is_ours():
    """Deterministic ids: the group of a request released after the checkpoint comes back under the same id,
    which the restored learner releases again before it reads (the re-sent request's group is a duplicate)."""
    b = book(batch=1, staleness=0)
    state = checkpointed(b, 0)
    b.releases(now=0.0)  # run-0-0, then a crash before any checkpoint
    r = book(state, batch=1, staleness=0)
    assert not r.released_by_this_run("run-0-0")  # not before the restored book releases it
    assert [x.request_id for x in r.releases(now=0.0)[0]] == ["run-0-0"]
    assert r.released_by_this_run("run-0-0") and not r.released_by_this_run("run-x-0")
    s = Stream()
    assert s.deliver(r, "run-0-0") is None  # the pre-crash group
    assert s.deliver(r, "run-0-0") == Outcome.DUPLICATE  # the re-sent request's group
    assert r.state.unconsumed == {"run-0-0": 0}


def test_dynamic_sampling_drops_judged_groups_and_releases_more():
    """Issue 25, item 1: a group the filter would not train is finished on arrival (its slot freed, a ledger row),
    and the admission limit grows with 1 / keep rate up to max_oversample x the base limit."""
    b = book(batch=2, staleness=0, now=0.0)
    b.max_oversample = 4.0
    assert b.admission_limit == 2 and b.keep_rate == 1.0  # no arrivals yet: the base limit (0 + 1) x 2
    s = Stream()
    releases, _ = b.releases(now=0.0)
    assert [r.request_id for r in releases] == ["run-0-0", "run-1-0"]
    assert s.deliver(b, "run-0-0") is None
    assert b.judged("run-0-0", "p-run-0-0", False, "all_correct") is False
    assert "run-0-0" not in b.buffer and b.is_done("run-0-0") and b.counts["all_correct"] == 1
    assert b.take_ledger_rows() == [{"request_id": "run-0-0", "prompt_id": "p-run-0-0", "outcome": "all_correct"}]
    # keep rate (0 kept + 1) / (1 judged + 1) = 0.5 -> limit ceil(2 / 0.5) = 4: run-1-0 is out, 3 more released
    assert b.keep_rate == 0.5 and b.admission_limit == 4
    assert [r.request_id for r in b.releases(now=1.0)[0]] == ["run-2-0", "run-3-0", "run-4-0"]
    for rid in ("run-1-0", "run-2-0", "run-3-0", "run-4-0"):
        s.deliver(b, rid)
        b.judged(rid, f"p-{rid}", False, "all_wrong")
    # 5 dropped of 5: keep rate 1/6, limit min(4, 6) x 2 = 8 (the cap)
    assert b.keep_rate == 1 / 6 and b.admission_limit == 8
    assert s.deliver(b, "run-5-0") == Outcome.FOREIGN  # not released yet: nothing trains without a release
    b.releases(now=2.0)
    s.deliver(b, "run-5-0")
    s.deliver(b, "run-6-0")
    assert b.judged("run-5-0", "p", True, "trained") and b.judged("run-6-0", "p", True, "trained")
    assert [g.request_id for g in b.take_batch()] == ["run-5-0", "run-6-0"]  # a full batch of kept groups


def test_dynamic_sampling_cannot_stall_a_policy_that_never_passes_the_filter():
    """A policy that never produces a kept group (a random model under RAFT): after (max_oversample - 1) x
    batch_groups drops for one batch, groups fill the batch anyway (the trainer's filter decides and a step with
    nothing to train still advances the version); the budget starts again with the next batch."""
    b = book(batch=2, staleness=0)
    b.max_oversample = 2.0  # drop budget (2 - 1) x 2 = 2 groups per batch
    s = Stream()
    dropped = []
    for _ in range(4):
        for r in b.releases(now=0.0)[0]:
            s.deliver(b, r.request_id)
            dropped.append(b.judged(r.request_id, "p", False, "all_wrong"))
    assert dropped[:2] == [False, False] and dropped[2:4] == [True, True]  # then they stay: full batches
    while len(b.buffer) >= 2:  # the kept groups are trained (finished) in batches; the budget is back each time
        train(b, "all_wrong")
    fresh = [r.request_id for r in b.releases(now=0.0)[0]]
    assert fresh and s.deliver(b, fresh[0]) is None
    assert b.judged(fresh[0], "p", False, "all_wrong") is False


def _simulate_dynamic_sampling(b: RequestBook, kept: list[bool], steps: int, rate: int) -> tuple[int, int]:
    """A generator faster than the learner: it returns ``rate`` groups per learner step, the oldest request first,
    each sampled at the version of that moment and judged on arrival (kept or not, from ``kept`` in turn); the
    learner releases again after every arrival (as its loop does) and takes a batch at the end of the step if it
    can. Returns (groups dropped as stale, batches trained)."""
    s, version, stale, trained, judged, queue = Stream(), 0, 0, 0, 0, []
    for _ in range(steps):
        for _ in range(rate):
            queue += [r.request_id for r in b.releases(now=0.0)[0]]
            if not queue:
                break
            rid = queue.pop(0)
            s.deliver(b, rid, version=version, policy_version=version)
            b.judged(rid, f"p-{rid}", kept[min(judged, len(kept) - 1)], "trained")
            judged += 1
        stale += len(b.drop_stale(version))
        if (batch := b.take_batch()) is not None:
            for g in batch:
                b.finish(g.request_id, g.prompt_id, g.where, "trained")
            trained += 1
            version += 1
    return stale, trained


def test_dynamic_sampling_releases_within_the_staleness_budget():
    """Every other group kept, a generator three times as fast as the learner needs (12 groups a step for batches
    of 4 kept). Released by the admission limit alone ((s + 1) x batch / keep rate, up to max_oversample x), the
    keep-rate estimate trailing the arrivals let more kept groups wait than two versions train: 72 were dropped as
    stale, sampled for nothing (test run: (72, 40)). Released by the groups expected to be kept (buffered + keep
    rate x those still out), none is, and as many batches train."""
    b = book(batch=4, staleness=1)
    b.max_oversample = 4.0
    stale, trained = _simulate_dynamic_sampling(b, [True, False] * 400, steps=40, rate=12)
    assert (stale, trained) == (0, 40)


def test_without_dynamic_sampling_the_release_rule_is_the_admission_limit():
    b = book(batch=4, staleness=1)  # max_oversample 1: (1 + 1) x 4 = 8 outstanding, whatever arrived
    assert len(b.releases(now=0.0)[0]) == 8
    s = Stream()
    for rid in ("run-0-0", "run-1-0", "run-2-0", "run-3-0"):
        s.deliver(b, rid)
    assert b.releases(now=0.0)[0] == []  # 4 buffered + 4 out: full
