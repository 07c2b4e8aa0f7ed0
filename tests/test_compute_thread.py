"""winnow/compute_thread.py: a service's torch calls run on one thread (one malloc arena), not the executor's many."""

from __future__ import annotations

import asyncio
import threading

from winnow import compute_thread


async def test_every_call_runs_on_the_same_thread_and_in_order() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []

    def work(i: int, *, scale: int = 1) -> int:
        seen.append((i, threading.get_ident()))
        return i * scale

    results = await asyncio.gather(*(compute_thread.run(work, i, scale=2) for i in range(20)))
    assert results == [2 * i for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))  # serialised, in submission order
    threads = {t for _, t in seen}
    assert len(threads) == 1 and loop_thread not in threads
    # asyncio.to_thread, what the services used: concurrent calls spread over the default executor's threads
    barrier = threading.Barrier(2, timeout=10)
    spread = await asyncio.gather(*(asyncio.to_thread(lambda: (barrier.wait(), threading.get_ident())[1])
                                    for _ in range(2)))
    assert len(set(spread)) == 2
