"""Which Kafka offsets are safe to commit when records finish out of order: one pure object, no Kafka client,
no clock, no I/O. The generators track their prompt records with it, the learner's request book its group records.

A partition is a ``(topic, partition)`` pair (aiokafka's ``TopicPartition`` is such a tuple and works as the
same key); a record is anything with ``topic``, ``partition`` and ``offset`` (an aiokafka ``ConsumerRecord``, the
book's ``Position``). ``track`` a record when it is read, ``done`` when its work is durable (or it was skipped):
:meth:`OffsetTracker.committable` gives per partition the lowest offset still pending, or one past the highest
read, so everything below it is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TP = tuple[str, int]


def _tp(where: Any) -> TP:
    if isinstance(where, tuple):
        return (where[0], where[1])
    return (where.topic, where.partition)


class OffsetTracker:
    """Pending, next and committed offsets per partition (see the module docstring).

    ``start`` (partition -> offset, e.g. from a checkpoint) resumes each partition there: reading, and committing,
    continue from that offset."""

    def __init__(self, start: Mapping[TP, int] | None = None) -> None:
        self._pending: dict[TP, set[int]] = {}
        self._next: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        for tp, off in (start or {}).items():
            self._next[_tp(tp)] = int(off)
            self._committed[_tp(tp)] = int(off)

    def track(self, record: Any) -> None:
        """``record`` was read: its offset is pending until :meth:`done`."""
        tp = _tp(record)
        self._pending.setdefault(tp, set()).add(record.offset)
        self._next[tp] = max(self._next.get(tp, 0), record.offset + 1)

    def done(self, record: Any, offset: int | None = None) -> None:
        """The work of ``record`` (or of ``offset`` in the partition ``record``) is durable, or it was skipped."""
        off = record.offset if offset is None else offset
        self._pending.get(_tp(record), set()).discard(off)

    def pending(self) -> int:
        """Records tracked but not done."""
        return sum(len(s) for s in self._pending.values())

    def committable(self) -> dict[TP, int]:
        """Per partition, the next offset to resume from: the lowest not yet done, else one past the highest read."""
        return {tp: min(p) if (p := self._pending.get(tp)) else nxt for tp, nxt in self._next.items()}

    def to_commit(self, owned: Iterable[TP] | None = None) -> dict[TP, int]:
        """The committable offsets that moved since the last :meth:`mark_committed` (of the ``owned`` partitions)."""
        owned = None if owned is None else {_tp(tp) for tp in owned}
        return {
            tp: off
            for tp, off in self.committable().items()
            if off > self._committed.get(tp, -1) and (owned is None or tp in owned)
        }

    def mark_committed(self, offsets: Mapping[TP, int]) -> None:
        for tp, off in offsets.items():
            key = _tp(tp)
            self._committed[key] = max(self._committed.get(key, -1), off)

    def forget(self, partitions: Iterable[TP]) -> None:
        """Drop the state of partitions this consumer no longer owns (after a rebalance)."""
        for tp in partitions:
            key = _tp(tp)
            self._pending.pop(key, None)
            self._next.pop(key, None)
            self._committed.pop(key, None)

    def rewind(self, tp: TP, offset: int) -> None:
        """The partition ``tp`` is read again from ``offset`` (the broker lost records): forget its pending
        offsets and resume committing from there."""
        key = _tp(tp)
        self._pending.pop(key, None)
        self._next[key] = offset
        self._committed[key] = offset
