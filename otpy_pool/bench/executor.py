"""The executor's figures beside the standard library's, loky's and pebble's
(each measured as ``peers`` measures them): one task's submit-and-result
round trip, and ``map`` over 20,000 tiny tasks in chunks of 500."""

from __future__ import annotations

import time
from typing import Any

from . import peers as _peers


class OtpyExecutor(_peers.ProcessPoolExecutorPeer):
    """otpy_pool.ProcessPoolExecutor, two workers, as the peers have."""

    name = "otpy_executor"

    def make(self) -> Any:
        from otpy_pool import ProcessPoolExecutor

        return ProcessPoolExecutor(2)


def submit_result_us(n: int, warmup: int) -> dict:
    """``executor_submit_result_us``: submit a no-op and wait for its result."""
    return _peers.round_trip_us(OtpyExecutor(), n, warmup)


def map_chunked_per_s(peer: _peers.Peer, tasks: int = 20_000, chunksize: int = 500) -> int:
    """``map`` of ``tasks`` no-ops in chunks of ``chunksize``, the workers up
    first: tasks per second (the best of three maps)."""
    pool = peer.make()
    try:
        peer.wait(peer.submit(pool, _peers.noop, 0), 30)
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for _ in pool.map(_peers.noop, range(tasks), chunksize=chunksize):
                pass
            best = max(best, tasks / (time.perf_counter() - t))
        return int(best)
    finally:
        peer.close(pool)


def ours_map_chunked_per_s(tasks: int = 20_000) -> int:
    """``executor_map_chunked_per_s``."""
    return map_chunked_per_s(OtpyExecutor(), tasks)


def ppe_map_chunked_per_s(tasks: int = 20_000) -> int:
    """``process_pool_executor_map_chunked_per_s``: the standard library's, beside."""
    return map_chunked_per_s(_peers.ProcessPoolExecutorPeer(), tasks)
