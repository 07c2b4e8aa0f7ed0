"""The worker pool: real processes, SIGKILL on the budget, replacement, recycling, limits, no leaks."""

from __future__ import annotations

import os
import signal
import time

import pytest

from winnow.verifier.pool import WorkerPool, _alive

HANG = {"gold": "5", "pred": "\\sum_{i=1}^{10^{40}} i^{i}", "percent": False}  # sympy grinds for minutes
EASY = {"gold": "x^2+2x+1", "pred": "(x+1)^2", "percent": False}


def _children_of(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


def _wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


_REASONS: list[str] = []


@pytest.fixture(scope="module")
def shared_pool():
    p = WorkerPool(workers=1, timeout_s=0.5, memory_mb=1024, max_tasks=1000, on_restart=_REASONS.append)
    yield p
    p.close()


@pytest.fixture
def reasons():
    _REASONS.clear()
    return _REASONS


@pytest.fixture
def pool(shared_pool, reasons):
    assert _wait_for(lambda: len(shared_pool.pids()) == 1)  # a replacement from the previous test is up
    return shared_pool


def test_runs_a_job(pool):
    assert pool.run(EASY) == {"status": "correct", "path": "numeric_probe", "detail": ""}


def test_overrun_is_killed_and_replaced(pool, reasons):
    (old,) = pool.pids()
    t0 = time.monotonic()
    reply = pool.run(HANG)
    elapsed = time.monotonic() - t0
    assert reply["status"] == "timeout" and reply["path"] == "pool"
    assert 0.5 <= elapsed < 3.0  # the 0.5 s budget plus slack on a loaded machine
    assert reasons == ["timeout"]
    assert _wait_for(lambda: not _alive(old))  # SIGKILLed and reaped
    assert pool.run(EASY)["status"] == "correct"  # the replacement answers
    assert pool.pids() and pool.pids() != [old]


def test_workers_are_recycled(reasons):
    pool = WorkerPool(workers=1, timeout_s=2.0, max_tasks=3, on_restart=reasons.append)
    (first,) = pool.pids()
    for _ in range(3):
        assert pool.run(EASY)["status"] == "correct"
    assert reasons == ["recycle"]
    assert _wait_for(lambda: pool.pids() and first not in pool.pids())
    assert pool.run(EASY)["status"] == "correct"
    pool.close()


def test_a_crashed_worker_is_reported_and_replaced(pool, reasons):
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGKILL)  # our own worker, by PID
    assert _wait_for(lambda: not _alive(pid))
    reply = pool.run(EASY)
    assert reply["status"] == "error" and reply["path"] == "pool"
    assert reasons == ["crash"]
    assert pool.run(EASY)["status"] == "correct"


def test_a_dead_zygote_is_restarted(reasons):
    p = WorkerPool(workers=1, timeout_s=2.0, on_restart=reasons.append)
    try:
        old_zygote, (worker,) = p.zygote_pid, p.pids()
        os.kill(old_zygote, signal.SIGKILL)  # our own zygote, by PID: its worker dies with it
        assert _wait_for(lambda: not _alive(worker))
        assert p.run(EASY)["status"] == "error"  # the job met a dead worker
        assert p.run(EASY)["status"] == "correct"  # a new zygote forked a new worker
        assert p.zygote_pid != old_zygote
    finally:
        p.close()
    assert not _alive(p.zygote_pid)


def test_worker_limits_are_set(pool):
    (pid,) = pool.pids()
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max address space"))
    assert str(1024 * 1024 * 1024) in line
    cpu = next(ln for ln in limits.splitlines() if ln.startswith("Max cpu time"))
    assert "unlimited" not in cpu.split()[3]


def _vm_size_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmSize:"))
    return int(line.split()[1]) // 1024


def test_memory_limit_turns_into_too_complex_and_a_fresh_worker(pool, reasons):
    base = _vm_size_mb(pool.pids()[0])  # a forked worker's address space (about 70 MB here)
    small = WorkerPool(workers=1, timeout_s=10.0, memory_mb=base + 12, on_restart=reasons.append)
    try:
        assert small.run(EASY)["status"] == "correct"  # normal jobs fit
        hog = {"gold": "5", "pred": "\\sum_{i=1}^{9000} \\frac{1}{i^{3}}", "percent": False}  # huge exact rational
        reply = small.run(hog)
        assert (reply["status"], reply["detail"]) == ("too_complex", "worker memory limit")
        assert reasons == ["memory"]
        assert small.run(EASY)["status"] == "correct"
    finally:
        small.close()


def test_batch_deadline_bounds_the_wait(pool):
    deadline = time.monotonic() + 0.3
    t0 = time.monotonic()
    reply = pool.run(HANG, timeout_s=5.0, deadline=deadline)  # the deadline is shorter than the budget
    assert reply["status"] == "timeout"
    assert time.monotonic() - t0 < 2.5


def test_close_leaves_no_process_behind(reasons):
    p = WorkerPool(workers=2, timeout_s=0.3, max_tasks=100, on_restart=reasons.append)
    zygote = p.zygote_pid
    workers = p.pids()
    assert len(workers) == 2 and all(_alive(w) for w in workers)
    assert set(workers) <= _children_of(zygote)
    assert zygote in _children_of(os.getpid())
    p.run(HANG)  # one kill + respawn in flight while we close
    p.close()
    for pid in [*p.pids_seen, zygote]:
        assert not _alive(pid), pid
    assert zygote not in _children_of(os.getpid())
    with pytest.raises(RuntimeError):
        p.run(EASY)


def test_idle_warmup_pool_answers_while_warming_up():
    """With idle_warmup (the service's setting) the zygote warms the grammar between fork requests;
    workers answer at once and keep their verdicts, also a worker forked while the zygote warms."""
    from winnow.verifier.pool import _WARMUP_IDLE, WorkerPool

    assert len(_WARMUP_IDLE) >= 20
    pool = WorkerPool(workers=1, timeout_s=30.0, idle_warmup=True)
    try:
        for gold, pred, status in [("x^2+2x+1", "(x+1)^2", "correct"), ("\\frac{1}{3}", "0.33", "wrong"),
                                   ("2<|x|\\le5", "[-5,-2)\\cup(2,5]", "correct")]:
            assert pool.run({"gold": gold, "pred": pred}, timeout_s=30.0)["status"] == status
        pid = pool.pids()[0]
        os.kill(pid, signal.SIGKILL)  # our own worker: its replacement is forked by a warming zygote
        assert _wait_for(lambda: not _alive(pid))
        assert pool.run({"gold": "1", "pred": "1"}, timeout_s=30.0)["status"] == "error"  # the crash, reported
        assert pool.run({"gold": "\\frac{1}{2}", "pred": "0.5"}, timeout_s=30.0)["status"] == "correct"
        assert pool.pids() and pool.pids()[0] != pid
    finally:
        pool.close()
