"""A small pool of pre-started worker processes for the symbolic path (VERIFIER_NOTES §4.6).

Why not ``concurrent.futures.ProcessPoolExecutor``: ``result(timeout)`` leaves a hung worker running
and a killed worker breaks the whole executor. Here each worker is a ``multiprocessing`` process
with its own duplex pipe:

* Start method ``forkserver`` (``spawn`` where unavailable): the verifier runs inside a grpc.aio
  server whose threads make ``fork`` of the server process unsafe. The fork server preloads
  ``winnow.verifier.symbolic`` (sympy + the ANTLR parser), so a replacement worker is ready in
  milliseconds and the first call is not slow.
* Requests and replies are small JSON documents (``send_bytes``), not pickles.
* Per-item wall-clock budget: the parent waits on the pipe with ``poll(budget)``; on expiry it sends
  SIGKILL and starts a replacement (never ``signal.alarm``: it cannot interrupt C-level bigint work
  and only works on the main thread).
* Each worker sets ``RLIMIT_AS`` (``memory_mb``) and ``RLIMIT_CPU`` (a backstop for an orphan) and
  asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``). A ``MemoryError``
  inside a worker is answered as too_complex and the worker exits to be replaced.
* Workers are recycled after ``max_tasks`` tasks (sympy caches grow).
* A caller may pass an absolute ``deadline`` (``time.monotonic()``) bounding both the wait for a
  free worker and the item's budget (the batch deadline of ``MathVerifier.verify_batch``).

Replacements are started in the caller's thread after the reply has been read.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

READY = b"ready"
_MAX_FRAME = 1 << 20


def _set_limits(memory_mb: int, cpu_s: int) -> None:
    import resource

    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def handle_job(job: dict) -> dict:
    """Run one symbolic comparison (in a worker). Returns the JSON reply."""
    from winnow.verifier.guard import VerifyError
    from winnow.verifier.symbolic import compare_canonical

    try:
        ok, path = compare_canonical(job["gold"], job["pred"], percent_option=bool(job.get("percent")))
        return {"status": "correct" if ok else "wrong", "path": path, "detail": ""}
    except VerifyError as exc:
        path = "guard" if exc.status == "too_complex" else "symbolic"
        return {"status": exc.status, "path": path, "detail": exc.detail}
    except MemoryError:
        return {"status": "too_complex", "path": "guard", "detail": "worker memory limit", "exit": "memory"}
    except RecursionError:
        return {"status": "too_complex", "path": "guard", "detail": "recursion limit"}
    except Exception as exc:  # a bug: reported as an error, never as "wrong"
        return {"status": "error", "path": "symbolic", "detail": f"{type(exc).__name__}: {exc}"[:300]}


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Read exactly ``n`` bytes from ``fd``; None on timeout; EOFError when the worker is gone."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("worker closed its pipe")
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, deadline: float | None = None) -> bytes | None:
    """One length-prefixed frame (4-byte big-endian length, then the body)."""
    head = _read_exact(fd, 4, deadline)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > _MAX_FRAME:
        raise EOFError("frame too large")
    body = _read_exact(fd, size, deadline)
    return body


def write_frame(fd: int, body: bytes) -> None:
    data = struct.pack(">I", len(body)) + body
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def worker_main(memory_mb: int, cpu_s: int) -> None:
    """Entry point of a worker process: answer JSON frames on stdin/stdout until EOF."""
    _set_limits(memory_mb, cpu_s)
    import winnow.verifier.symbolic  # noqa: F401  (sympy and the ANTLR parser, before the first job)

    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    write_frame(out, READY)
    while True:
        try:
            data = read_frame(inp)
        except (EOFError, OSError):
            return
        if data is None:
            return
        try:
            reply = handle_job(json.loads(data))
        except MemoryError:
            reply = {"status": "too_complex", "path": "guard", "detail": "worker memory limit", "exit": "memory"}
        write_frame(out, json.dumps(reply).encode())
        if reply.get("exit"):
            return


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    ready: bool = False
    tasks: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid


class WorkerPool:
    """``workers`` processes, each running ``worker_main``; ``run(job)`` is thread-safe and blocking."""

    def __init__(self, *, workers: int = 2, timeout_s: float = 2.0, memory_mb: int = 1024,
                 max_tasks: int = 500, on_restart: Callable[[str], None] | None = None,
                 start_timeout_s: float = 60.0):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_tasks = max_tasks
        self.start_timeout_s = start_timeout_s
        self._on_restart = on_restart
        self._cpu_s = int(60 + max_tasks * min(timeout_s, 1.0))
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._closed = False
        self.pids_seen: list[int] = []
        self.restarts = 0
        started = [self._spawn() for _ in range(workers)]
        for w in started:  # sympy is imported before the first job, so the first call is not slow
            self._wait_ready(w)
            self._idle.put(w)

    def _spawn(self) -> _Worker:
        cmd = [sys.executable, "-m", "winnow.verifier.pool", "--memory-mb", str(self.memory_mb),
               "--cpu-s", str(self._cpu_s)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        w = _Worker(proc)
        with self._lock:
            self._all.add(w)
            self.pids_seen.append(proc.pid)
        return w

    def _kill(self, w: _Worker) -> None:
        with self._lock:
            self._all.discard(w)
        with contextlib.suppress(Exception):
            w.process.kill()  # SIGKILL: cannot be caught, works mid-bigint
        with contextlib.suppress(Exception):
            w.process.wait(5)
        for f in (w.process.stdin, w.process.stdout):
            with contextlib.suppress(Exception):
                f.close()

    def _replace(self, w: _Worker, reason: str) -> None:
        """SIGKILL ``w`` now; reap it and start its replacement in a background thread."""
        with contextlib.suppress(Exception):
            w.process.kill()
        with self._lock:
            self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(reason)
        threading.Thread(target=self._reap_and_respawn, args=(w,), name="winnow-verifier-respawn",
                         daemon=True).start()

    def _reap_and_respawn(self, w: _Worker) -> None:
        self._kill(w)
        if self._closed:
            return
        fresh = self._spawn()
        if self._closed:  # close() ran while we were spawning: do not leak the new worker
            self._kill(fresh)
            return
        self._idle.put(fresh)

    def _wait_ready(self, w: _Worker) -> bool:
        if not w.ready:
            with contextlib.suppress(EOFError, OSError):
                frame = read_frame(w.process.stdout.fileno(), time.monotonic() + self.start_timeout_s)
                w.ready = frame == READY
        return w.ready

    def run(self, job: dict, *, timeout_s: float | None = None, deadline: float | None = None) -> dict:
        """Run ``job`` on a free worker within the budget; returns the reply (``status``, ``path``, ``detail``)."""
        if self._closed:
            raise RuntimeError("pool is closed")
        budget = self.timeout_s if timeout_s is None else timeout_s
        try:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            w = self._idle.get(timeout=wait)
        except queue.Empty:
            return {"status": "timeout", "path": "deadline", "detail": "batch deadline passed before a worker was free"}
        if not self._wait_ready(w):
            self._replace(w, "crash")
            return {"status": "error", "path": "pool", "detail": "worker did not start"}
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        try:
            write_frame(w.process.stdin.fileno(), json.dumps(job).encode())
            frame = read_frame(w.process.stdout.fileno(), time.monotonic() + budget)
            if frame is None:
                self._replace(w, "timeout")
                return {"status": "timeout", "path": "pool", "detail": f"worker killed after {budget:.2f} s"}
            reply = json.loads(frame)
        except (EOFError, OSError, ValueError):
            self._replace(w, "crash")
            return {"status": "error", "path": "pool", "detail": "worker crashed"}
        w.tasks += 1
        if reply.get("exit"):
            self._replace(w, str(reply["exit"]))
        elif w.tasks >= self.max_tasks:
            self._replace(w, "recycle")
        else:
            self._idle.put(w)
        return reply

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]

    def close(self) -> None:
        """Kill every worker (SIGKILL) and reap it."""
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for w in workers:
            self._kill(w)
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="winnow verifier worker (started by WorkerPool)")
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--cpu-s", type=int, default=600)
    args = parser.parse_args(argv)
    worker_main(args.memory_mb, args.cpu_s)


if __name__ == "__main__":
    _main()
