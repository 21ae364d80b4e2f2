"""The pool awaited from asyncio beside the blocking forms, in one run
(``python -m otpy_pool.bench``): ``pool_aexecute_us`` beside
``pool_execute_alt_us`` (one caller, a bound session, samples alternating
so both see the same load; their ratio ``aexecute_over_execute_p50``), and
``aexecute_concurrent_per_s``: 1,000 session commands in flight at a time
from one event loop on 2 workers, beside ``pool_burst_per_s`` (the same
commands pipelined by ``execute_many`` from 8 processes).

The case runs right after the burst, before the cases that grow the
benchmark's own heap (Ray's import, 100,000 sessions): 1,000 commands in
flight keep the collector busy, and each full collection would walk those
too (in the last place it measured 0.25–0.31 of the burst; 0.48–0.55 alone
in a fresh program), a cost of the benchmark's other cases, not of the
awaited command.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from otpy.bench import summarize

from otpy_pool import Pool, Worker, command

IN_FLIGHT = 1000
SESSIONS = 8


class Echo(Worker):
    @command
    def noop(self, session: Any, x: Any = None) -> Any:
        return x


async def _alternating(pool: Pool, n: int, warmup: int) -> tuple[list[int], list[int]]:
    ns = time.perf_counter_ns
    sync, aio = [], []
    for i in range(warmup + n):
        t = ns()
        pool.execute("noop", i, session="bench")
        sync.append(ns() - t)
        t = ns()
        await pool.aexecute("noop", i, session="bench")
        aio.append(ns() - t)
    return sync[warmup:], aio[warmup:]


async def _concurrent(pool: Pool, total: int) -> float:
    """Commands per second, IN_FLIGHT at a time, spread over SESSIONS sessions."""
    for s in range(SESSIONS):  # bound before timing: each session's first command binds it
        await pool.aexecute("noop", session=s)
    began = time.perf_counter()
    for start in range(0, total, IN_FLIGHT):
        await asyncio.gather(*(pool.aexecute("noop", i, session=i % SESSIONS)
                               for i in range(start, min(total, start + IN_FLIGHT))))
    return total / (time.perf_counter() - began)


def async_calls(n: int, warmup: int, total: int) -> dict[str, Any]:
    pool = Pool.start_link(Echo, size=2)
    try:
        sync, aio = asyncio.run(_alternating(pool, n, warmup))
        rate = asyncio.run(_concurrent(pool, total))
    finally:
        pool.stop()
    return {"pool_execute_alt_us": summarize(sync, 1e3), "pool_aexecute_us": summarize(aio, 1e3),
            "aexecute_concurrent_per_s": int(rate)}
