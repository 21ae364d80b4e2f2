"""'Not running' is one type across otpy_pool: a stopped pool, breaker or
limiter (and the testing layer's inline pool) raises PoolNotRunning, each
family's own subclass where it has one."""

from __future__ import annotations

import pytest

from otpy_pool import (BreakerNotRunning, CircuitBreaker, LimiterNotRunning, Pool,
                       PoolNotRunning, RateLimiter, Worker, command)
from otpy_pool.testing import InlinePool


class Echo(Worker):
    @command
    def echo(self, session, x):
        return x


def test_a_stopped_pool():
    pool = Pool.start_link(Echo, size=1, name="gone")
    assert pool.execute("echo", 1) == 1
    pool.stop()
    with pytest.raises(PoolNotRunning, match="'gone' is not running"):
        pool.execute("echo", 2)


def test_a_stopped_breaker_and_limiter():
    db = CircuitBreaker.start_link("db")
    db.stop()
    with pytest.raises(BreakerNotRunning) as info:
        CircuitBreaker("db", timeout=0.1).stats()
    assert isinstance(info.value, PoolNotRunning)
    api = RateLimiter.start_link("api")
    api.stop()
    with pytest.raises(LimiterNotRunning) as info:
        RateLimiter("api", timeout=0.1).hit("k", limit=1, window=1.0)
    assert isinstance(info.value, PoolNotRunning)


def test_a_stopped_inline_pool():
    pool = InlinePool(Echo)
    pool.stop()
    with pytest.raises(PoolNotRunning, match="is stopped"):
        pool.execute("echo", 1)
