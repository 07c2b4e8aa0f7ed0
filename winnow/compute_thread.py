"""One thread for a process's torch work (the learner's steps, the generators' sampling and weight loads).

``asyncio.to_thread`` hands each call to whichever thread of the event loop's default executor is free, so one
training step's tensors are allocated on one thread and the next step's on another. Every thread allocates from
its own malloc arena (glibc keeps up to 8 per core; jemalloc an arena per thread group and a cache per thread),
and memory freed into one thread's arena does not serve the next step on another thread: the resident set grows
step after step instead of settling at one step's peak. ``benchmarks/learner_memory.py`` measures it (the default
run's learner: docs/benchmarks.md, "learner memory"). Running every torch call of a service on the one thread of
:func:`run` keeps them in one arena; it also serialises them, which the services want anyway (a weight load
between two sampling calls, never during one).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """This process's compute thread (started on first use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="winnow-compute")
    return _executor


async def run(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``await run(fn, *args)``: ``fn(*args, **kwargs)`` on the compute thread (``asyncio.to_thread``'s shape)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(), functools.partial(fn, *args, **kwargs))
