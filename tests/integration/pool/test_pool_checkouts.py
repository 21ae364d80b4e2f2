"""Waiting for a worker and holding one: FIFO, PoolTimeout, max_queue, callers
that die queued or holding a checkout. (Moved from test_pool.py.)"""

from __future__ import annotations

import otpy
import pytest
from otpy.testing import wait_for
from otpy_pool import Pool, PoolError, PoolOverloaded, PoolTimeout

from helpers import DEADLINE, expect, expect_down, in_thread, sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def test_waiting_callers_are_served_in_fifo_order():
    me = otpy.self()
    pool = start(size=1)
    pool.subscribe()
    with pool.checkout() as w:
        first = in_thread(pool.execute, "ran", me, "first")
        event("queued")
        second = in_thread(pool.execute, "ran", me, "second")
        event("queued")
        assert pool.status().queued == 2 and pool.status().busy == 1
        w.execute("ping")  # the holder is served meanwhile
    assert (first(), second()) == ("first", "second")
    # the order the one worker ran them in (its reports arrive in the order sent;
    # the threads' own return order is the scheduler's, not the pool's)
    ran = [expect(lambda m: type(m) is tuple and m[:1] == ("ran",))[1] for _ in range(2)]
    assert ran == ["first", "second"]
    pool.stop()


def test_a_caller_that_waits_too_long_gets_pool_timeout_and_its_request_never_runs():
    me = otpy.self()
    pool = start(size=1, checkout_timeout=0.2)
    with pool.checkout() as w:
        with pytest.raises(PoolTimeout) as info:
            pool.execute("ran", me, "late")
        assert isinstance(info.value, otpy.Timeout) and isinstance(info.value, PoolError)
        assert pool.status().queued == 0
        assert w.execute("ping") == ("pong", "notes", None)  # the holder is not disturbed
    assert pool.execute("ran", me, "now") == "now"
    assert expect(lambda m: m[:1] == ("ran",)) == ("ran", "now")  # "late" never ran
    status = pool.status()
    assert status.timeouts == 1 and status.total_commands == 2
    with pool.checkout():
        with pytest.raises(PoolTimeout):
            with pool.checkout(timeout=0.1):
                pass
    pool.stop()


def test_max_queue_refuses_at_once():
    pool = start(size=1, max_queue=1)
    pool.subscribe()
    with pool.checkout():
        waiting = in_thread(pool.execute, "ping")
        event("queued")
        with pytest.raises(PoolOverloaded, match="max_queue=1"):
            pool.execute("ping")
        assert event("overloaded").detail == 1
    assert waiting() == ("pong", "notes", None)
    pool.stop()


def _queue_then_report(pool: Pool, report_to: otpy.Pid) -> None:
    otpy.send(report_to, ("queued_caller", otpy.self()))
    pool.execute("ping")


def test_a_caller_that_dies_while_queued_leaves_the_queue():
    pool = start(size=1)
    pool.subscribe()
    with pool.checkout():
        caller = otpy.spawn(_queue_then_report, pool, otpy.self())
        event("queued")
        assert pool.status().queued == 1
        sigkill(caller)
        pool.workers()  # the server has handled the Down by the time it answers
        assert pool.status().queued == 0
    pool.stop()


def _checkout_and_wait(pool: Pool, report_to: otpy.Pid) -> None:
    with pool.checkout() as w:
        otpy.send(report_to, ("holding", "caller", w.pid))
        otpy.receive()


def test_a_caller_that_dies_holding_a_checkout_gets_its_worker_replaced():
    pool = start(size=1)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    caller = otpy.spawn(_checkout_and_wait, pool, otpy.self())
    _, _, held = expect(lambda m: m[:2] == ("holding", "caller"))
    ref = otpy.monitor(held)
    sigkill(caller)
    expect_down(ref)
    event("worker_started")
    assert held not in pool.workers() and len(pool.workers()) == 1
    assert pool.execute("notes", session="s") == ["kept"]  # moved by replay
    pool.stop()


def _checkout_twice_and_wait(pool: Pool, report_to: otpy.Pid) -> None:
    with pool.checkout() as w:
        w.execute("ping")
    otpy.send(report_to, ("returned", w.pid))
    otpy.receive(match=lambda m: m == "again")
    _checkout_and_wait(pool, report_to)


def test_only_what_a_dead_caller_holds_is_replaced():
    """The server keeps one monitor per caller across its checkouts: a
    caller that returned its worker and later dies holding another checkout
    has only that one replaced; one that dies holding nothing changes nothing."""
    pool = start(size=1)
    caller = otpy.spawn(_checkout_twice_and_wait, pool, otpy.self())
    _, first = expect(lambda m: type(m) is tuple and m[0] == "returned")
    assert pool.workers() == [first] and pool.status().idle == 1
    otpy.send(caller, "again")
    _, _, held = expect(lambda m: m[:2] == ("holding", "caller"))
    assert held == first
    ref = otpy.monitor(held)
    sigkill(caller)
    expect_down(ref)
    idle_caller = otpy.spawn(_checkout_twice_and_wait, pool, otpy.self())
    _, second = expect(lambda m: type(m) is tuple and m[0] == "returned")
    sigkill(idle_caller)
    pool.workers()  # the server has handled the Down by the time it answers
    assert pool.workers() == [second] and pool.status().idle == 1
    assert pool.status().worker_restarts == 0  # replaced on purpose, not a crash
    pool.stop()


def test_checkout_returns_the_worker_or_replaces_it_after_an_exception():
    pool = start(size=1)
    with pool.checkout() as w:
        first = w.pid
        assert w.execute("echo", 1, k=2) == ((1,), {"k": 2})
    assert pool.workers() == [first] and pool.status().idle == 1
    ref = otpy.monitor(first)
    with pytest.raises(ZeroDivisionError):
        with pool.checkout() as w:
            1 / 0
    expect_down(ref)
    # the replacement starts just after the death (FILL_GRACE)
    wait_for(lambda: len(pool.workers()) == 1 and pool.workers() != [first], DEADLINE)
    assert pool.status().worker_restarts == 0  # a planned replacement
    pool.stop()
