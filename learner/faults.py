"""Fault injection for the crash tests (tests/pipeline/test_distributed_learner.py), off unless configured.

``WINNOW_FAULT="<rank>:<moment>:<version>"`` makes the process of that global rank SIGKILL itself (kill -9: no
handler, no cleanup) at ``moment`` of the step that starts at policy ``version``:

- ``step``: after rank 0 took the batch from the book, before this rank's forward (mid-step for the pipeline);
- ``checkpoint``: after this rank wrote its checkpoint part, before the checkpoint is complete;
- ``publish``: right after the weights of ``version`` were published (rank 0: announced).

``WINNOW_FAULT_ONCE=<path>``: die only if ``path`` does not exist yet (it is created first), so the processes
that torchrun or ``winnow up --resume`` restarts with the same environment run on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def maybe_die(moment: str, version: int) -> None:
    spec = os.environ.get("WINNOW_FAULT")
    if not spec:
        return
    rank, want, at = spec.split(":")
    if want != moment or int(at) != int(version) or int(rank) != int(os.environ.get("RANK", "0")):
        return
    once = os.environ.get("WINNOW_FAULT_ONCE")
    if once:
        try:
            Path(once).touch(exist_ok=False)
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
