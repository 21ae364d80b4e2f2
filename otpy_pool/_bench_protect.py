"""Measurements of the breaker and the limiter, side by side with the
libraries users would otherwise pick (pybreaker, limits). Reused by the
benchmark (``python -m otpy_pool.bench``); run alone with
``python -m otpy_pool._bench_protect``.

Each figure is measured in one run with the same harness for both sides:
a timed loop for the breaker's per-call overhead (too small to time one call
at a time), per-hit timings and their median for the limiter.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import otpy

from ._breaker import CircuitBreaker
from ._limiter import RateLimiter


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


if __name__ == "__main__":
    print("breaker closed path:", breaker_closed_overhead())
    print("limiter hit:", limiter_hit_p50())
