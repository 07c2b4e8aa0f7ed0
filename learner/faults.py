"""Fault injection for the crash tests (tests/pipeline/test_distributed_learner.py), off unless configured.

``WINNOW_FAULT="<rank>:<moment>:<version>"`` makes the process of that global rank SIGKILL itself (kill -9: no
handler, no cleanup) at ``moment`` of the step that starts at policy ``version``:

- ``step``: after rank 0 took the batch from the book, before this rank's forward (mid-step for the pipeline);
- ``checkpoint``: after this rank wrote its checkpoint part, before the checkpoint is complete;
- ``publish``: right after the weights of ``version`` were published (rank 0: announced);
- ``deferred`` (rank 0): the broker refuses the announcement of ``version`` (a ``KafkaError`` raised in its place, as
  a broker that lost its topics or a moving partition leader answers), the learner defers it to the broker check's
  recovery as it does for a real refusal, and dies with the announcement still deferred.

``WINNOW_FAULT_ONCE=<path>``: die only if ``path`` does not exist yet (it is created first), so the processes
that torchrun or ``winnow up --resume`` restarts with the same environment run on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def armed(moment: str, version: int) -> bool:
    """The fault names this process's rank, ``moment`` and ``version``, and has not fired yet (WINNOW_FAULT_ONCE)."""
    spec = os.environ.get("WINNOW_FAULT")
    if not spec:
        return False
    rank, want, at = spec.split(":")
    if want != moment or int(at) != int(version) or int(rank) != int(os.environ.get("RANK", "0")):
        return False
    once = os.environ.get("WINNOW_FAULT_ONCE")
    return not (once and Path(once).exists())


def maybe_die(moment: str, version: int) -> None:
    if not armed(moment, version):
        return
    once = os.environ.get("WINNOW_FAULT_ONCE")
    if once:
        try:
            Path(once).touch(exist_ok=False)
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
