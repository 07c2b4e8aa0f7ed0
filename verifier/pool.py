"""A small pool of worker processes for the symbolic path, with a wall-clock budget per item (docs/verifier.md, 'Worker pool and budgets').

Why not ``concurrent.futures.ProcessPoolExecutor``: ``result(timeout)`` leaves a hung worker running
and a killed worker breaks the whole executor. Why not ``multiprocessing``: its spawn/forkserver
start methods re-import the parent's ``__main__`` in every child, and plain ``fork`` of the server
process is unsafe (the verifier runs inside a grpc.aio server whose threads hold locks).

Design:

* A **zygote** process is started with ``subprocess.Popen`` (fork+exec: safe next to grpc threads)
  running ``python -m winnow.verifier.pool --zygote``. It imports sympy and the ANTLR parser once
  (``winnow.verifier.symbolic``), then, single-threaded, forks a worker on request and hands the
  parent one end of a fresh socketpair (``socket.send_fds``). A replacement worker is therefore
  ready in milliseconds, and the first call is not slow.
* Each worker sets ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_CPU`` (a backstop against an orphan) and
  ``PR_SET_PDEATHSIG`` (SIGKILL when the zygote dies; the zygote exits when its control socket to the
  parent closes, i.e. when the parent process exits).
  A ``MemoryError`` is answered as too_complex and the worker exits to be replaced.
* Requests and replies are length-prefixed JSON frames, never pickles.
* Per-item wall-clock budget: the parent waits with ``select``; on expiry it SIGKILLs the worker
  (never ``signal.alarm``: that cannot interrupt C-level bigint work and only works on the main
  thread) and a background thread reaps it and forks a replacement.
* Workers are recycled after ``max_tasks`` tasks (sympy caches grow).
* ``run(job, deadline=...)``: an absolute ``time.monotonic()`` deadline bounds both the wait for a
  free worker and the item's budget (the batch deadline of ``MathVerifier.verify_batch``).
* ``close()`` SIGKILLs every worker and the zygote and waits until they are gone.

The zygote reaps its children automatically (SIGCHLD ignored), so workers never linger as zombies.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READY = b"ready"
_MAX_FRAME = 1 << 20
_PR_SET_PDEATHSIG = 1
_FD_LOCK = threading.Lock()
# Warm-up pairs. ``_WARMUP`` runs once in the zygote before it forks the first worker (the first ANTLR
# parse and sympy evaluation are slow). ``_WARMUP_IDLE`` runs one pair at a time whenever the zygote or
# a worker has nothing to do: ANTLR's adaptive prediction builds its DFA cache (class-level, inherited
# by every worker forked later, also after recycling) and sympy's caches fill, so a worker does not pay
# ~100 ms the first time it meets each form. Generic forms, not taken from any test suite.
_WARMUP = [("x^2+2x+1", "(x+1)^2"), ("\\frac{\\sqrt{2}}{2}", "\\sin(\\pi/4)"), ("3x+4y=1", "y=1-x"),
           ("x>3", "(3,\\infty)"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"), ("\\{1,2\\}", "\\ln 2")]
_WARMUP_IDLE = [
    ("\\frac{n(n+1)}{2}", "\\sum_{i=1}^{n} i"), ("1+\\tan^2 x", "\\sec^2 x"), ("2", "\\sqrt[3]{8}"),
    ("\\sqrt{1+\\sqrt{5}}", "\\sqrt{\\sqrt{5}+1}"), ("\\frac{x+1}{3}", "\\frac{x}{3}+\\frac{1}{3}"),
    ("\\begin{pmatrix}\\frac{1}{2}&\\cos x\\\\0&1\\end{pmatrix}", "\\begin{pmatrix}0.5&\\cos(x)\\\\0&1\\end{pmatrix}"),
    ("\\begin{pmatrix}2&0\\\\0&2\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}+\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"),
    ("2<|x|\\le5", "[-5,-2)\\cup(2,5]"), ("\\sqrt[3]{x}", "x^{\\frac{1}{3}}"), ("a_{n+1}=2a_n", "a_{n+1}-2a_n=0"),
    ("5x-2y+7=0", "y=\\frac{5}{2}x+\\frac{7}{2}"), ("\\sqrt{10}", "10^{\\frac{1}{2}}"), ("2", "\\log_{3} 9"),
    ("2", "\\ln(e^2)"), ("5", "(2-i)(2+i)"), ("3", "\\lceil 2.1\\rceil"), ("20", "\\binom{6}{3}"), ("24", "4!"),
("\\frac{ad+bc}{bd}", "\\frac{a}{b}+\\frac{c}{d}"),
    ("\\{\\frac{1}{2},3\\}", "\\{3,\\frac{2}{4}\\}"), ("\\cos 2\\theta", "\\cos^2\\theta-\\sin^2\\theta"),
    ("\\sin 15^\\circ", "\\frac{\\sqrt{6}-\\sqrt{2}}{4}"), ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}"),
    ("e^{x+y}", "e^{x}e^{y}"), ("x_{1}+x_{2}", "x_{2}+x_{1}"), ("|x-1|", "|1-x|"), ("\\pi r^2", "r^2\\pi"),
    ("\\frac{3\\sqrt{3}}{2}", "\\frac{\\sqrt{27}}{2}"), ("-1\\le x<2", "[-1,2)"),
]


def _idle_warmup(fd: int, pending: list[tuple[str, str]]) -> None:
    """Run warm-up pairs while nothing is waiting on ``fd`` (returns as soon as something is)."""
    import winnow.verifier.symbolic

    while pending and not select.select([fd], [], [], 0)[0]:
        gold, pred = pending.pop(0)
        handle_job({"gold": gold, "pred": pred})
        winnow.verifier.symbolic.clear_caches()  # keep the ANTLR DFA and sympy caches, not our parse cache


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _set_limits(memory_mb: int, cpu_s: int) -> None:
    import resource

    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))


def handle_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one symbolic comparison (in a worker). Returns the JSON reply."""
    from winnow.verifier.guard import VerifyError
    from winnow.verifier.symbolic import compare_canonical

    try:
        ok, path = compare_canonical(job["gold"], job["pred"], percent_option=bool(job.get("percent")),
                                     rounded=bool(job.get("rounded")), unit=job.get("unit", "i"))
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


# --------------------------------------------------------------------------- framing


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Read exactly ``n`` bytes from ``fd``; None on timeout; EOFError when the peer is gone."""
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
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, deadline: float | None = None) -> bytes | None:
    """One frame: a 4-byte big-endian length, then the body. None on timeout."""
    head = _read_exact(fd, 4, deadline)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > _MAX_FRAME:
        raise EOFError("frame too large")
    return _read_exact(fd, size, deadline)


def write_frame(fd: int, body: bytes) -> None:
    view = memoryview(struct.pack(">I", len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------- processes


def worker_loop(fd: int, handle: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Answer JSON job frames on ``fd`` with ``handle`` (default: :func:`handle_job`) until EOF (runs in a forked
    worker)."""
    handle = handle or handle_job
    write_frame(fd, READY)
    while True:
        try:
            data = read_frame(fd)
        except (EOFError, OSError):
            return
        if data is None:
            return
        try:
            reply = handle(json.loads(data))
        except MemoryError:
            reply = {"status": "too_complex", "path": "guard", "detail": "worker memory limit", "exit": "memory"}
        write_frame(fd, json.dumps(reply).encode())
        if reply.get("exit"):
            return


def zygote_main(ctrl_fd: int, memory_mb: int, cpu_s: int, idle_warmup: bool = False, handler: str = "",
                handler_arg: str = "") -> None:
    """Preload sympy, then fork one worker per b"s" read on the control socket (single-threaded).

    ``handler`` (a module name) replaces the symbolic jobs: the zygote calls its ``zygote_init(handler_arg)`` once
    (e.g. import the reward functions) and the workers answer jobs with its ``handle_job(job) -> dict``.

    The zygote exits when the control socket closes (the parent exited or closed the pool); it does
    not use PR_SET_PDEATHSIG, which fires when the parent *thread* that started it exits.
    """
    sys.stdout = sys.stderr  # stray prints must never reach a protocol pipe
    handle = None
    if handler:
        import importlib

        module = importlib.import_module(handler)
        module.zygote_init(handler_arg)
        handle = module.handle_job
        idle_warmup = False
    else:
        gc.disable()  # sympy's import: ~80,000 lasting objects, ~400 garbage; the collections during it cost ~15%
        import winnow.verifier.symbolic  # noqa: F401  (sympy + latex2sympy2_extended, once)

        for gold, pred in _WARMUP:  # the first ANTLR parse and sympy evaluation are slow: pay it once here
            handle_job({"gold": gold, "pred": pred})
        winnow.verifier.symbolic.clear_caches()
        gc.enable()
    gc.collect()
    gc.freeze()  # keep the preloaded heap shared copy-on-write with the workers
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    ctrl = socket.socket(fileno=ctrl_fd)
    pending = list(_WARMUP_IDLE) if idle_warmup else []
    while True:
        if pending:
            _idle_warmup(ctrl_fd, pending)
            if not pending:
                gc.collect()
                gc.freeze()
        try:
            cmd = ctrl.recv(1)
        except OSError:
            cmd = b""
        if not cmd:
            os._exit(0)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                ctrl.close()
                ours.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with_parent()
                _set_limits(memory_mb, cpu_s)
                worker_loop(theirs.fileno(), handle)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        socket.send_fds(ctrl, [struct.pack(">q", pid)], [ours.fileno()])
        ours.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class _Zygote:
    """The parent's handle on the zygote process (thread-safe ``fork``)."""

    def __init__(self, memory_mb: int, cpu_s: int, idle_warmup: bool = False, handler: str = "",
                 handler_arg: str = ""):
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "winnow.verifier.pool", "--zygote", "--fd", str(theirs.fileno()),
               "--memory-mb", str(memory_mb), "--cpu-s", str(cpu_s)] + (["--idle-warmup"] if idle_warmup else [])
        if handler:
            cmd += ["--handler", handler, "--handler-arg", handler_arg]
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def fork(self, timeout_s: float) -> tuple[int, int]:
        """Ask for a worker; returns (pid, socket fd). Raises OSError/EOFError when the zygote is gone."""
        with self.lock:
            self.sock.settimeout(timeout_s)
            self.sock.sendall(b"s")
            msg, fds, _, _ = socket.recv_fds(self.sock, 8, 1)
            if len(msg) != 8 or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise EOFError("zygote closed the connection")
            return struct.unpack(">q", msg)[0], fds[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        with contextlib.suppress(Exception):
            self.sock.close()


@dataclass(eq=False)
class _Worker:
    pid: int
    fd: int
    ready: bool = False
    tasks: int = 0
    dead: bool = False

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill, close the socket once (a closed fd number may be reused), wait until the process is gone."""
        self.kill()
        with _FD_LOCK:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        deadline = time.monotonic() + 5
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.002)


class WorkerPool:
    """``workers`` forked worker processes; ``run(job)`` is thread-safe and blocks for one reply."""

    def __init__(self, *, workers: int = 2, timeout_s: float = 2.0, memory_mb: int = 1024,
                 max_tasks: int = 500, on_restart: Callable[[str], None] | None = None,
                 start_timeout_s: float = 60.0, idle_warmup: bool = False, handler: str = "",
                 handler_arg: str = ""):
        """``idle_warmup``: the zygote runs ``_WARMUP_IDLE`` between fork requests, so workers forked
        later (recycled, replaced) start warm (a long-running service; costs a few CPU seconds after
        start, so tests and one-shot scoring leave it off). ``handler``/``handler_arg``: workers run another
        module's jobs (see :func:`zygote_main`; the reward functions of :mod:`winnow.verifier.rewards`)."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_tasks = max_tasks
        self.start_timeout_s = start_timeout_s
        self._on_restart = on_restart
        self._cpu_s = int(60 + max_tasks * min(timeout_s, 1.0))
        self._idle_warmup = idle_warmup
        self._handler = (handler, handler_arg)
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._closed = False
        self._zygote = _Zygote(memory_mb, self._cpu_s, self._idle_warmup, *self._handler)
        self.pids_seen: list[int] = []
        self.restarts = 0
        for _ in range(workers):
            w = self._spawn()
            self._wait_ready(w)  # sympy is already imported: the first job is not slow
            self._idle.put(w)

    @property
    def zygote_pid(self) -> int:
        return self._zygote.proc.pid

    def _spawn(self) -> _Worker:
        for attempt in range(2):
            try:
                pid, fd = self._zygote.fork(self.start_timeout_s)
                break
            except (OSError, EOFError):
                if attempt or self._closed:
                    raise
                with self._lock:  # the zygote died: start a new one (slow path, about a second)
                    self._zygote.close()
                    self._zygote = _Zygote(self.memory_mb, self._cpu_s, self._idle_warmup, *self._handler)
        w = _Worker(pid, fd)
        with self._lock:
            self._all.add(w)
            self.pids_seen.append(pid)
        return w

    def _forget(self, w: _Worker) -> None:
        """Kill ``w`` and wait until it is gone; close() also waits for workers still dying here."""
        w.close()
        with self._lock:
            self._all.discard(w)

    def _replace(self, w: _Worker, reason: str) -> None:
        """SIGKILL ``w`` now; reap it and fork its replacement in a background thread."""
        w.kill()
        with self._lock:
            self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(reason)
        threading.Thread(target=self._reap_and_respawn, args=(w,), name="winnow-verifier-respawn",
                         daemon=True).start()

    def _reap_and_respawn(self, w: _Worker) -> None:
        self._forget(w)
        if self._closed:
            return
        try:
            fresh = self._spawn()
        except (OSError, EOFError):
            return  # closed meanwhile, or no zygote: run() reports errors on the next call
        if self._closed:  # close() ran while we were forking: do not leak the new worker
            self._forget(fresh)
            return
        self._idle.put(fresh)

    def _checkout(self, deadline: float | None) -> _Worker | None:
        """A free worker; waits up to the deadline (or, without one, until a worker should long be free).

        If every worker is gone (a respawn failed), one is forked here; None when that fails too.
        """
        patience = self.start_timeout_s + self.timeout_s
        wait = patience if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self._idle.get(timeout=wait)
        except queue.Empty:
            pass
        with self._lock:
            missing = not self._all
        if missing and not self._closed and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(OSError, EOFError):
                return self._spawn()
        return None

    def _wait_ready(self, w: _Worker) -> bool:
        if not w.ready:
            with contextlib.suppress(EOFError, OSError):
                w.ready = read_frame(w.fd, time.monotonic() + self.start_timeout_s) == READY
        return w.ready

    def run(self, job: dict[str, Any], *, timeout_s: float | None = None, deadline: float | None = None) -> dict[str, Any]:
        """Run ``job`` on a free worker within the budget; the reply has ``status``, ``path``, ``detail``."""
        if self._closed:
            raise RuntimeError("pool is closed")
        budget = self.timeout_s if timeout_s is None else timeout_s
        w = self._checkout(deadline)
        if w is None:
            if deadline is not None and time.monotonic() >= deadline:
                return {"status": "timeout", "path": "deadline",
                        "detail": "batch deadline passed before a worker was free"}
            return {"status": "error", "path": "pool", "detail": "no worker available"}
        if deadline is not None and time.monotonic() >= deadline:  # the job waited past its deadline (a late
            self._idle.put(w)  # dispatch thread): a job with no budget left would only kill a healthy worker
            return {"status": "timeout", "path": "deadline", "detail": "batch deadline passed before dispatch"}
        if not self._wait_ready(w):
            self._replace(w, "crash")
            return {"status": "error", "path": "pool", "detail": "worker did not start"}
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        try:
            write_frame(w.fd, json.dumps(job).encode())
            frame = read_frame(w.fd, time.monotonic() + budget)
            if frame is None:
                self._replace(w, "timeout")
                return {"status": "timeout", "path": "pool", "detail": f"worker killed after {budget:.2f} s"}
            reply: dict[str, Any] = json.loads(frame)
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
        """PIDs of the live workers."""
        with self._lock:
            return [w.pid for w in self._all]

    def close(self) -> None:
        """SIGKILL every worker and the zygote, and wait until they are gone. Idempotent."""
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for w in workers:  # includes workers a respawn thread is still reaping
            w.close()
        with self._lock:
            self._all.clear()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        self._zygote.close()


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="winnow verifier zygote (started by WorkerPool)")
    parser.add_argument("--zygote", action="store_true", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--cpu-s", type=int, default=600)
    parser.add_argument("--idle-warmup", action="store_true")
    parser.add_argument("--handler", default="")
    parser.add_argument("--handler-arg", default="")
    args = parser.parse_args(argv)
    zygote_main(args.fd, args.memory_mb, args.cpu_s, args.idle_warmup, args.handler, args.handler_arg)


if __name__ == "__main__":
    _main()
