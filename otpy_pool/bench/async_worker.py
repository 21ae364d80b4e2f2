"""``async_worker_concurrency`` (``python -m otpy_pool.bench``): 200
commands that each ``await asyncio.sleep(0.05)``, sent at once from one
event loop to a pool of one async worker with ``max_concurrency=200``:
seconds until all are answered (the median of a few rounds). One at a time
they would take 10 s; run concurrently, the goal is 0.2 s.

The commands are session-less: each takes one of the worker's 200 slots
through the pool's server (a checkout), runs, and gives it back.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from otpy_pool import Pool, Worker, command

COMMANDS = 200
NAP = 0.05


class Napper(Worker):
    """Commands that mostly wait, as an LLM API call or a database does."""

    max_concurrency = COMMANDS

    @command
    async def nap(self, session: Any, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


async def _round(pool: Pool, n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(pool.aexecute("nap", NAP) for _ in range(n)))
    return time.perf_counter() - start


def async_worker_concurrency(rounds: int = 5, n: int = COMMANDS) -> float:
    """Seconds for ``n`` naps on one worker, the median of ``rounds`` (after one warm-up)."""
    pool = Pool.start_link(Napper, size=1, checkout_timeout=30.0)
    try:
        async def measure() -> list[float]:
            await _round(pool, n)  # warm-up: the caller's settings and the loop's reader
            return [await _round(pool, n) for _ in range(rounds)]

        return round(statistics.median(asyncio.run(measure())), 4)
    finally:
        pool.stop()
