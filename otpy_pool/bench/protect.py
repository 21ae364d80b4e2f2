"""Measurements of the breaker and the limiter, side by side with the
libraries users would otherwise pick (pybreaker, limits). Reused by the
benchmark (``python -m otpy_pool.bench``); run alone with
``python -m otpy_pool.bench.protect``.

Each figure is measured in one run with the same harness for both sides:
a timed loop for the breaker's per-call overhead (too small to time one call
at a time), per-hit timings and their median for the limiter.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import otpy

from otpy_pool import CircuitBreaker, RateLimiter


def _noop(x: int) -> int:
    return x


def _loop_us(fn: Any, n: int) -> float:
    """Microseconds per fn(1), best of 5 runs (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            fn(1)
        best = min(best, (time.perf_counter() - began) / n * 1e6)
    return best


def breaker_closed_overhead(n: int = 100_000) -> dict[str, float]:
    """Per-call overhead over a direct call of a closed breaker: otpy's
    (``breaker.call(fn, x)``) and pybreaker's (``breaker.call(fn, x)``)."""
    import pybreaker

    name = f"bench-breaker-{time.monotonic_ns()}"
    ours = CircuitBreaker.start_link(name, max_failures=5, window=10.0, reset_after=30.0)
    try:
        theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        ours.call(_noop, 1)  # map the page before timing
        direct = _loop_us(_noop, n)
        otpy_us = _loop_us(lambda x: ours.call(_noop, x), n)
        pyb_us = _loop_us(lambda x: theirs.call(_noop, x), n)
        lam = _loop_us(lambda x: _noop(x), n)  # the lambda both wrappers pay
    finally:
        ours.stop()
    ours_over = otpy_us - lam
    theirs_over = pyb_us - lam
    return {"direct_us": round(direct, 3), "otpy_overhead_us": round(ours_over, 3),
            "pybreaker_overhead_us": round(theirs_over, 3),
            "ratio": round(ours_over / theirs_over, 3) if theirs_over > 0 else float("nan")}


def _hit_timer(parent: otpy.Pid, limiter: RateLimiter, hits: int) -> None:
    samples = []
    for i in range(hits):
        began = time.perf_counter_ns()
        limiter.hit(("bench", i % 64), 1_000_000_000, 60.0)
        samples.append(time.perf_counter_ns() - began)
    otpy.send(parent, ("samples", samples))


def limiter_hit_p50(processes: int = 2, hits: int = 2_000,
                    algorithm: str = "fixed_window") -> dict[str, float]:
    """Median hit latency from ``processes`` processes hitting at once, and
    the ``limits`` library's in-memory storage in one process, same loop."""
    name = f"bench-limiter-{time.monotonic_ns()}"
    limiter = RateLimiter.start_link(name, algorithm=algorithm)
    try:
        me = otpy.self()
        for _ in range(processes):
            otpy.spawn(_hit_timer, me, limiter, hits)
        samples: list[int] = []
        for _ in range(processes):
            samples += otpy.receive(timeout=120,
                                    match=lambda m: type(m) is tuple and m[:1] == ("samples",))[1]
    finally:
        limiter.stop()
    result = {"otpy_p50_us": round(statistics.median(samples) / 1000, 2)}
    try:
        import limits
        from limits import storage, strategies
    except ImportError:
        return result
    strategy = (strategies.FixedWindowRateLimiter if algorithm == "fixed_window"
                else strategies.MovingWindowRateLimiter)(storage.MemoryStorage())
    item = limits.RateLimitItemPerMinute(1_000_000_000)
    theirs = []
    for i in range(hits):
        began = time.perf_counter_ns()
        strategy.hit(item, "bench", str(i % 64))
        theirs.append(time.perf_counter_ns() - began)
    result["limits_memory_p50_us"] = round(statistics.median(theirs) / 1000, 2)
    return result


def _rss_kb(os_pid: int) -> int:
    """Resident memory of a process, shared pages included (its memfd mappings)."""
    with open(f"/proc/{os_pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def limiter_memory(keys: int = 1_000_000, window: float = 60.0) -> dict[str, float]:
    """``keys`` distinct keys hit once each (a fixed window), then the window
    passes and a sweep runs: the shared table's size and this process's RSS
    (which maps the table) at the peak and after. ``window`` must outlast the
    filling (about 25 s for a million keys here)."""
    name = f"bench-limiter-memory-{time.monotonic_ns()}"
    limiter = RateLimiter.start_link(name, algorithm="fixed_window", cleanup_interval=0.2)
    try:
        import os
        began = time.perf_counter()
        last = None
        for n in range(keys):
            last = limiter.hit(n, 1, window)
        filled = time.perf_counter() - began
        peak = limiter.stats()
        rss_peak = _rss_kb(os.getpid())
        assert last is not None
        time.sleep(max(0.0, last.reset_at - time.time()))  # the window passes
        sweeps = limiter.stats()["sweeps"]
        deadline = time.monotonic() + 60
        while limiter.stats()["sweeps"] < sweeps + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        limiter.hit("one more", 1, window)  # remaps the (small) current table
        after = limiter.stats()
        rss_after = _rss_kb(os.getpid())
    finally:
        limiter.stop()
    return {"keys": keys, "fill_seconds": round(filled, 1),
            "table_mb_peak": round(peak["table_bytes"] / 2**20, 1),
            "table_mb_after": round(after["table_bytes"] / 2**20, 2),
            "buckets_after": after["buckets"],
            "rss_mb_peak": round(rss_peak / 1024, 1), "rss_mb_after": round(rss_after / 1024, 1)}


if __name__ == "__main__":
    import sys

    print("breaker closed path:", breaker_closed_overhead())
    print("limiter hit, 2 processes:", limiter_hit_p50())
    print("limiter hit, 2 processes, token bucket:", limiter_hit_p50(algorithm="token_bucket"))
    print("limiter hit, 2 processes, sliding window:",
          limiter_hit_p50(algorithm="sliding_window"))
    if "--memory" in sys.argv:
        print("limiter memory:", limiter_memory())
