"""Every timeout, deadline and interval otpy_pool takes follows
``lowlevel.check_timeout``: None and ``math.inf`` mean no limit where waiting
forever makes sense; nan, negatives, bools and non-numbers are refused,
naming the parameter, before anything is sent or started (issue 21, item 2)."""

from __future__ import annotations

import math

import otpy
import pytest
from otpy_pool import (CircuitBreaker, Policy, Pool, PoolEvent, RateLimiter, protect)

from helpers import expect
from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers

BAD = [(math.nan, ValueError), (-1, ValueError), (True, TypeError), ("5", TypeError),
       (0, ValueError)]


def start(**opts) -> Pool:
    opts.setdefault("size", 1)
    return Pool.start_link(Notes, **opts)


def nothing_ran(pool: Pool) -> None:
    status = pool.status()
    assert (status.total_commands, status.sessions, status.busy) == (0, 0, 0)


# ---- refused before anything is sent or started --------------------------------------------

@pytest.mark.parametrize("option", ["checkout_timeout", "command_timeout", "health_interval",
                                    "health_timeout", "overflow_idle"])
@pytest.mark.parametrize("value, error", BAD)
def test_a_bad_pool_option_is_refused_naming_it(option, value, error):
    before = otpy.processes()
    with pytest.raises(error, match=option):
        Pool.start_link(Notes, size=1, **{option: value})
    with pytest.raises(error, match=option):
        Pool.child_spec(Notes, **{option: value})
    assert otpy.processes() == before


@pytest.mark.parametrize("value, error", BAD)
def test_a_bad_init_timeout_is_refused_naming_it(value, error):
    worker = type("Odd", (Notes,), {"init_timeout": value})
    with pytest.raises(error, match="Odd.init_timeout"):
        Pool.start_link(worker, size=1)


def test_bad_command_timeouts_and_waits_are_refused_before_anything_is_sent():
    pool = start()
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            pool.execute("ping", session="s", timeout=value)
        with pytest.raises(error, match="timeout"):
            pool.execute("ping", timeout=value)
        with pytest.raises(error, match="checkout_timeout"):
            pool.execute("ping", checkout_timeout=value)
        with pytest.raises(error, match="timeout"):
            pool.execute_many("add", [("x",)], session="s", timeout=value)
        with pytest.raises(error, match="timeout"):
            with pool.checkout(timeout=value):
                pass
        with pool.checkout() as held:
            with pytest.raises(error, match="timeout"):
                held.execute("ping", timeout=value)
        if value != 0:  # a stop may be given no time (the supervisor then kills)
            with pytest.raises(error, match="stop timeout"):
                pool.stop(timeout=value)
    nothing_ran(pool)
    assert pool.execute("ping") == ("pong", "notes", None)  # the pool was not stopped
    pool.stop()


def test_bad_deadlines_and_delays_of_recovery_are_refused():
    pool = start()
    for value, error in BAD:
        with pytest.raises(error, match="deadline"):
            protect(pool, deadline=value)
        with pytest.raises(error, match="timeout"):
            protect(pool).execute("ping", timeout=value)
    for field in ("backoff", "max_backoff"):
        with pytest.raises(ValueError, match=f"Policy {field}"):
            Policy(**{field: math.nan})
        with pytest.raises(ValueError, match=f"Policy {field}"):
            Policy(**{field: math.inf})  # a delay is finite
        with pytest.raises(TypeError, match=f"Policy {field}"):
            Policy(**{field: True})
    nothing_ran(pool)
    pool.stop()


def test_bad_breaker_and_limiter_timeouts_are_refused():
    for value, error in BAD:
        with pytest.raises(error, match="timeout"):
            CircuitBreaker("b", timeout=value)
        with pytest.raises(error, match="timeout"):
            RateLimiter("r", timeout=value)
    for option in ("window", "reset_after"):  # intervals of the state machine: finite
        for value in (math.inf, math.nan, -1, None):
            with pytest.raises(ValueError, match=option):
                CircuitBreaker.start_link("b", **{option: value})
    limiter = RateLimiter.start_link("r")
    for value in (math.inf, math.nan, 0):
        with pytest.raises(ValueError, match="window"):
            limiter.hit("k", limit=1, window=value)
    with pytest.raises(ValueError, match="acquire timeout"):
        limiter.acquire("k", limit=1, window=1.0, timeout=math.nan)
    with pytest.raises(TypeError, match="acquire timeout"):
        limiter.acquire("k", limit=1, window=1.0, timeout=False)
    assert limiter.inspect("k", limit=1, window=1.0).count == 0  # nothing was counted
    limiter.stop()


# ---- math.inf (and None) mean no limit, end to end --------------------------------------------

def test_infinite_command_timeouts_run_the_command():
    pool = start(command_timeout=math.inf)
    assert pool._settings().command_timeout is None
    assert pool.execute("add", "x", session="s", timeout=math.inf) == 1
    assert pool.execute("ping", timeout=math.inf) == ("pong", "notes", None)
    assert pool.execute("add", "y", session="s") == 2  # the pool's own: inf
    assert pool.execute_many("add", [("z",)], session="s", timeout=math.inf) == [3]
    assert pool.execute_many("echo", [(1,)], timeout=math.inf) == [((1,), {})]
    with pool.checkout(timeout=math.inf) as held:
        assert held.execute("ping", timeout=math.inf) == ("pong", "notes", None)
    assert pool.status().errors == 0
    pool.stop(timeout=math.inf)


def test_an_infinite_checkout_timeout_waits_for_a_worker():
    pool = start(checkout_timeout=math.inf)
    pool.subscribe()
    me = otpy.self()
    with pool.checkout():
        otpy.spawn(lambda: otpy.send(me, ("served", pool.execute("ping"))))
        expect(lambda m: isinstance(m, PoolEvent) and m.kind == "queued")
        otpy.spawn(lambda: otpy.send(
            me, ("served", pool.execute("ping", checkout_timeout=math.inf))))
        expect(lambda m: isinstance(m, PoolEvent) and m.kind == "queued")
        assert pool.status().queued == 2
    assert expect(lambda m: m[:1] == ("served",)) == ("served", ("pong", "notes", None))
    assert expect(lambda m: m[:1] == ("served",)) == ("served", ("pong", "notes", None))
    assert pool.status().timeouts == 0
    pool.stop()


def test_infinite_intervals_mean_never():
    pool = start(health_interval=math.inf, health_timeout=math.inf, overflow_idle=math.inf,
                 max_overflow=1)
    with pool.checkout(), pool.checkout() as extra:
        assert pool.status().overflow == 1
    assert extra.pid in pool.workers()  # an overflow worker idle "forever" stays
    pool.stop()
    forever = type("Patient", (Notes,), {"init_timeout": math.inf})
    pool = Pool.start_link(forever, size=1)
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def test_infinite_deadlines_and_handle_timeouts():
    pool = start()
    assert protect(pool, deadline=math.inf).execute("add", "x", session="s") == 1
    assert protect(pool, deadline=None).execute("ping", timeout=math.inf)[0] == "pong"
    breaker = CircuitBreaker.start_link("b")
    assert CircuitBreaker("b", timeout=math.inf).call(abs, -1) == 1
    assert CircuitBreaker("b", timeout=None).stats()["calls"] == 1
    breaker.stop()
    limiter = RateLimiter.start_link("r")
    assert RateLimiter("r", timeout=math.inf).hit("k", limit=2, window=60.0).allowed
    assert limiter.acquire("k", limit=2, window=60.0, timeout=math.inf).count == 2
    assert limiter.acquire("j", limit=1, window=60.0, timeout=None).allowed
    limiter.stop()
    pool.stop()
