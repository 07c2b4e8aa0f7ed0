"""Plain data types of the verifier, shared by the engine, the gRPC server and ``winnow score``.

``Status`` mirrors ``winnow.v1.Status`` in protos/winnow/v1/verifier.proto (same numbers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    UNSPECIFIED = 0
    CORRECT = 1
    WRONG = 2
    NO_ANSWER = 3
    UNPARSABLE = 4
    TIMEOUT = 5
    TOO_COMPLEX = 6
    ERROR = 7

    @property
    def label(self) -> str:
        """Lower-case name used in JSONL output and metric labels: ``correct``, ``no_answer``..."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Status:
        return cls[label.upper()]


@dataclass(slots=True)
class Item:
    """One answer to score (see VerifyRequest in the proto)."""

    id: str
    response: str
    gold: str
    task: str = ""
    options: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    """The problem the response answers (for reward functions and reward models; the math verifier ignores it)."""


@dataclass(slots=True)
class Verdict:
    """The verdict for one item (see VerifyResult in the proto)."""

    id: str
    status: Status
    extracted: str = ""
    path: str = ""
    detail: str = ""
    latency_ms: float = 0.0
    score: float | None = None
    """The verifier's scalar score next to the status (partial credit, a reward model, weighted reward
    functions); None when it only judged. The learner takes it as the reward when present."""

    @property
    def correct(self) -> bool:
        return self.status == Status.CORRECT


def status_label(status: int) -> str:
    """``Status`` value -> its label (``correct``, ...), ``unknown`` for a number outside the enum."""
    try:
        return Status(int(status)).label
    except ValueError:
        return "unknown"
