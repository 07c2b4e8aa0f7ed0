"""A finished run stays finished: the completion marker ``<run_dir>/finished.json``.

When the learner reaches ``max_steps`` it checkpoints, writes the marker (version, max_steps,
run id, time) and publishes a last weight announcement with ``final=true`` (the same weights), so
generators stop asking for prompts. What the process does then is ``on_finish``:

- ``exit`` (the default, for ``winnow up`` and scripts): return, exit code 0.
- ``idle`` (the Helm chart, where the learner is a StatefulSet that Kubernetes restarts whenever
  it exits): stay up, serving ``/metrics`` and ``/health`` (``winnow_learner_run_finished`` = 1),
  training nothing, until SIGTERM.

On start the learner honours a marker when it resumes (``checkpoint.resume``) and the marker's
version reaches the configured ``max_steps``: it builds no model and does no Kafka work, and then
exits or idles as above. Raising ``max_steps`` continues the run from its checkpoint; a fresh run
(``checkpoint.resume: false``) removes a stale marker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from winnow.learner.weights import WeightPublisher

log = logging.getLogger(__name__)

MARKER = "finished.json"


def marker_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MARKER


def write_marker(run_dir: str | Path, *, version: int, max_steps: int | None, run_id: str = "") -> Path:
    """Write the marker atomically (temporary file, then rename)."""
    path = marker_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"version": int(version), "max_steps": max_steps, "run_id": run_id,
                               "finished_at": time.time()}, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The marker's content, or None when there is none. An unreadable marker is an error naming
    the file (never silently ignored: it would restart a finished run)."""
    path = marker_path(run_dir)
    if not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        int(data["version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"completion marker {path} is unreadable ({e}); delete it to train again") from None
    return data


def finished_run(run_dir: str | Path, max_steps: int | None, resume: bool) -> dict[str, Any] | None:
    """The marker if the configured run is already finished, else None (see the module docstring)."""
    if not resume:
        stale = marker_path(run_dir)
        if stale.exists():
            log.info("fresh run (checkpoint.resume is false): removing the old completion marker %s", stale)
            stale.unlink()
        return None
    marker = read_marker(run_dir)
    if marker is None or max_steps is None or int(marker["version"]) < max_steps:
        if marker is not None:
            log.info("completion marker at version %s, max_steps now %s: continuing the run",
                     marker["version"], max_steps)
            marker_path(run_dir).unlink()
        return None
    return marker


async def finish_run(run_dir: str | Path, *, version: int, max_steps: int | None, run_id: str,
                     publisher: WeightPublisher | None) -> Path:
    """``max_steps`` reached (and checkpointed): write the marker, then announce the last weights once
    more with ``final=true`` so generators stop asking for prompts. ``publisher``: the learner's
    :class:`~winnow.learner.weights.WeightPublisher` (or None)."""
    path = write_marker(run_dir, version=version, max_steps=max_steps, run_id=run_id)
    last = publisher.last if publisher is not None else None
    if publisher is not None and last is not None:
        final = type(last)()
        final.CopyFrom(last)
        final.final = True
        await publisher.announce(final)
    log.info("run finished at version %d: wrote %s%s", version, path, ", announced final weights" if last is not None else "")
    return path


class IdleLearner:
    """What a finished learner runs under ``on_finish: idle``: healthy, serving metrics, no work."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        return not self._stop.is_set()

    async def run(self) -> int:
        await self._stop.wait()
        return 0
