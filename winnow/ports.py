"""Port claims between concurrent ``winnow up`` runs on one machine.

``winnow up`` chooses its services' ports (each service's default port when it is free) seconds before the
services bind them. Two runs started together both found the default ports free, and one run's service then failed
with "Address already in use". A *claim* closes that window: a file ``<dir>/<host>_<port>`` holding the claimer's
PID and process start time. A port is available to a run when it can be bound now **and** no other live process
holds a claim on it; claims of dead processes (a ``winnow up`` killed with -9) are stale and taken over. Checking
and claiming happen under one exclusive ``flock`` of ``<dir>/.lock``, so two runs never claim one port. A run
releases its claims when it stops.

The directory is per user (``$TMPDIR/winnow-ports-<uid>``, or ``WINNOW_PORT_CLAIMS_DIR``): runs of different users
are not coordinated (their services still fail fast on a taken port, as before).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def default_dir() -> Path:
    configured = os.environ.get("WINNOW_PORT_CLAIMS_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"winnow-ports-{os.getuid()}"


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which tells a live claimer
    from a new process that got a dead claimer's PID; None where /proc has no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is the live process that wrote a claim with start time ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = start_time(pid)
    return started is None or now is None or now == started


class PortClaims:
    """The ports one process (``pid``, default this one) has claimed in ``directory``."""

    def __init__(self, directory: Path | None = None, pid: int | None = None) -> None:
        self.dir = directory or default_dir()
        self.pid = pid if pid is not None else os.getpid()
        self.held: list[Path] = []

    def _path(self, host: str, port: int) -> Path:
        return self.dir / f"{host}_{port}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (check-then-claim as one step across processes)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove stale claims (their processes are gone), so the directory holds only live runs' ports."""
        for path in self.dir.iterdir():
            if path.name.startswith("."):
                continue
            host, _, port = path.name.rpartition("_")
            if port.isdigit() and self.holder(host, int(port)) is None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def holder(self, host: str, port: int) -> int | None:
        """The PID of the live process holding a claim on ``port``, or None (no claim, or a stale one)."""
        try:
            fields = self._path(host, port).read_text().split()
            pid, started = int(fields[0]), (fields[1] if len(fields) > 1 else None)
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid, started) else None

    def free(self, host: str, port: int) -> bool:
        """No other live process holds ``port`` (call under :meth:`locked` when a claim follows)."""
        return self.holder(host, port) in (None, self.pid)

    def claim(self, host: str, port: int) -> None:
        """Write the claim (under :meth:`locked`, after :meth:`free` said yes); replaces a stale one."""
        path = self._path(host, port)
        tmp = path.with_name(f".{path.name}.{self.pid}")
        tmp.write_text(f"{self.pid} {start_time(self.pid) or ''}\n")
        tmp.replace(path)
        if path not in self.held:
            self.held.append(path)

    def release(self) -> None:
        """Remove this process's claims (those another process took over after a PID reuse are left)."""
        with self.locked():
            for path in self.held:
                try:
                    if int(path.read_text().split()[0]) == self.pid:
                        path.unlink()
                except (OSError, ValueError, IndexError):
                    pass
        self.held = []
