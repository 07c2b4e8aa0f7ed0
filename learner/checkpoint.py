"""Learner checkpoints: everything needed to resume without losing or repeating a scored group.

A checkpoint is a folder ``<dir>/step-<version:08d>/`` with

- ``trainer.pt``: :meth:`Trainer.state_dict` (model, optimizer, version), written with
  ``torch.save`` and read back with ``weights_only=True`` (local disk only, never the wire);
- ``state.json``: the service state (:class:`LearnerState`): version, next data position,
  released-but-unconsumed requests, the dedupe window, the consumed Kafka offsets.

It is written to a temporary folder, fsynced and renamed into place; then the ``LATEST`` file
(also replaced atomically) names it. A crash at any point leaves the previous checkpoint
intact. The newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LATEST = "LATEST"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


@dataclass
class LearnerState:
    """The service's resumable state (everything except the trainer's tensors)."""

    version: int = 0
    """Optimizer steps taken (the policy version)."""
    run_id: str = ""
    """Random id of the run, the prefix of its request ids (kept across restarts)."""
    next_position: int = 0
    """Position in the prompt source of the next prompt to release."""
    unconsumed: dict[str, int] = field(default_factory=dict)
    """Released requests not yet trained on or dropped: request_id -> data position."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Data position (as a string key) -> release attempts so far, for positions in ``unconsumed``."""
    seen: list[str] = field(default_factory=list)
    """Request ids already trained on or dropped (the dedupe window, oldest first)."""
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    """Groups-topic offsets that are safe to resume from: topic -> partition -> next offset."""
    prompts_released: int = 0
    """Prompt requests released so far (for metrics continuity)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LearnerState:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def begin_checkpoint(directory: str | Path, version: int) -> Path:
    """Create the empty temporary folder of the checkpoint for ``version`` (removing folders that killed
    writers left behind) and return it. The trainer's part is written into it (``trainer.pt``, or under
    data parallelism ``trainer.dcp/`` by every rank), then :func:`finish_checkpoint` makes it the latest."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp-step-*"):  # a checkpoint whose writer was killed (the run dir is locked)
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / f".tmp-step-{version:08d}"
    tmp.mkdir()
    return tmp


def finish_checkpoint(directory: str | Path, tmp: Path, state: LearnerState, keep: int = 2) -> Path:
    """Write ``state.json`` into ``tmp``, fsync, rename it to ``step-<version>`` and point ``LATEST`` at it."""
    root = Path(directory)
    name = f"step-{state.version:08d}"
    final = root / name
    try:
        _write_file(tmp / "state.json", state.to_json().encode())
        _fsync_dir(tmp)
        if final.exists():  # re-checkpointing the same version (e.g. at shutdown)
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
        _write_file(latest_tmp, name.encode())
        os.replace(latest_tmp, root / LATEST)
        _fsync_dir(root)
    except OSError as e:
        raise CheckpointError(_why_write_failed(root, e)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep, protect=name)
    log.info("checkpoint %s written", final)
    return final


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message says why (a full disk, permissions)."""


def _why_write_failed(root: Path, e: BaseException) -> str:
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = -1
    hint = f"; {free / 2**20:.0f} MiB free on its filesystem" if free >= 0 else ""
    if free >= 0 and free < 64 * 2**20:
        hint += " (the disk is full: free space or point learner.checkpoint.dir elsewhere)"
    return f"writing a checkpoint in {root} failed: {e}{hint}. The previous checkpoint is intact."


def save_checkpoint(
    directory: str | Path, trainer_state: dict[str, Any], state: LearnerState, keep: int = 2
) -> Path:
    """Atomically write a checkpoint for ``state.version`` and point ``LATEST`` at it; returns its folder.
    A failed write (a full disk) raises :class:`CheckpointError` naming the folder and the free space, and
    leaves no temporary folder behind."""
    import torch

    tmp = begin_checkpoint(directory, state.version)
    try:
        with open(tmp / "trainer.pt", "wb") as f:
            torch.save(trainer_state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch's zip writer reports ENOSPC as "unexpected pos ..."
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_why_write_failed(Path(directory), e)) from e
    from winnow.learner.faults import maybe_die

    maybe_die("checkpoint", state.version)
    return finish_checkpoint(directory, tmp, state, keep)


def _prune(root: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file() and ((path / "trainer.pt").is_file() or (path / "trainer.dcp").is_dir())


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The folder ``LATEST`` names; if it is missing or incomplete (a deleted folder, a torn copy), the newest
    complete ``step-*`` folder, with a warning; None if there is no complete checkpoint at all."""
    root = Path(directory)
    marker = root / LATEST
    named = root / marker.read_text().strip() if marker.is_file() else None
    if named is not None and _complete(named):
        return named
    steps = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and _complete(p)), reverse=True) \
        if root.is_dir() else []
    if named is not None or steps:
        log.warning("%s names %s, which is %s; resuming from %s instead", marker,
                    named if named is not None else "nothing", "incomplete" if named is not None else "missing",
                    steps[0] if steps else "nothing (no complete checkpoint)")
    return steps[0] if steps else None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Any], LearnerState]:
    """``(trainer_state_dict, LearnerState)`` from a checkpoint folder."""
    import torch

    p = Path(path)
    trainer_state = torch.load(p / "trainer.pt", map_location=map_location, weights_only=True)
    state = LearnerState.from_json((p / "state.json").read_text())
    return trainer_state, state


class Ledger:
    """``<run_dir>/ledger.jsonl``: one row per scored group the learner finished (trained or
    dropped), ``{"version", "request_id", "prompt_id", "outcome"}``, where ``version`` is the
    checkpoint that holds it.

    Rows are appended just before the checkpoint that makes them durable; on restore the rows of
    later versions (work that is redone) are cut, so the file is exactly the checkpointed history:
    each request id appears once. It is the audit trail for "no group lost, none trained twice".
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, version: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"version": version, **row}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, version: int) -> int:
        """Keep only the rows of checkpoints up to ``version``; the others move to ``ledger.discarded.jsonl``
        (work of a lineage that did not survive, kept for the audit, never deleted). Returns how many moved."""
        return discard_rows_after(self.path, version)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def discarded_path(path: Path) -> Path:
    """``x.jsonl`` -> ``x.discarded.jsonl``: where rows of discarded lineages go."""
    return path.with_name(f"{path.stem}.discarded{path.suffix}")


def discard_rows_after(path: Path, version: int) -> int:
    """Move the JSON rows of ``path`` whose ``version`` is above ``version`` (and torn lines) to
    :func:`discarded_path`, appending; the rest stay, in order. Returns how many rows moved."""
    if not path.exists():
        return 0
    keep: list[str] = []
    cut: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keep_it = int(row.get("version", 0)) <= version
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):  # a torn line from a crash
            keep_it = False
        (keep if keep_it else cut).append(line)
    if not cut:
        return 0
    with discarded_path(path).open("a") as f:
        f.write("".join(c + "\n" for c in cut))
        f.flush()
        os.fsync(f.fileno())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)
    log.warning("moved %d rows of %s above version %d to %s", len(cut), path.name, version, discarded_path(path).name)
    return len(cut)


class DeadLetters:
    """``<run_dir>/dead-letter.jsonl``: one row per quarantined record (a scored group that did not decode or
    failed the group check), ``{"time", "topic", "partition", "offset", "request_id", "reason", "bytes"}``.
    The record is skipped (its offset committed past it like any done record), never trained, and never
    crashes the learner; the row says why, so an operator can find the producer (``generator_id`` is in the
    reason when the record decoded)."""

    def __init__(self, path: Path, counter: Any = None) -> None:
        self.path, self.counter = path, counter

    def write(self, where: Any, request_id: str, reason: str, size: int = 0) -> None:
        """Log, count (``reason`` label: invalid when it decoded, else undecodable) and append one row."""
        import time

        log.warning("quarantined %s[%d]@%d: %s", where.topic, where.partition, where.offset, reason)
        if self.counter is not None:
            self.counter.labels(reason="invalid" if request_id else "undecodable").inc()
        row = {"time": time.time(), "topic": where.topic, "partition": where.partition, "offset": where.offset,
               "request_id": request_id, "reason": reason[:2000], "bytes": size}
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
