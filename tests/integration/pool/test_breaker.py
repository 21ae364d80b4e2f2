"""CircuitBreaker's handle (``_breaker``), in the manner of fuse's suite: a
breaker's life through real processes (melts, blows, heals, resets,
disables), and its options. The owner's side (counts from every process,
events, SIGKILL, stop) is in test_breaker_owner.py."""

from __future__ import annotations

import os
import pickle

import pytest

import otpy
from otpy_pool import BreakerEvent, CircuitBreaker, CircuitOpen

from breakers import Boom, Harmless, event, fail, kill_owner, no_event, owner_pid, start
from helpers import DEADLINE, expect, expect_down


# ---- closed -----------------------------------------------------------------------------

def test_closed_runs_calls_in_the_caller_with_args_and_result():
    db = start("db")
    assert db.state == "closed"
    assert db.call(lambda a, b=0: (os.getpid(), a + b), 1, b=2) == (os.getpid(), 3)


def test_decorator_and_context_manager_guard_the_same_breaker():
    db = start("db", max_failures=2, reset_after=60)

    @db
    def query(sql):
        if sql == "bad":
            raise Boom(sql)
        return sql.upper()

    assert query("select") == "SELECT"
    assert query.__name__ == "query"
    with pytest.raises(Boom):
        query("bad")
    with pytest.raises(Boom):
        with db:
            raise Boom("block")
    assert db.state == "open"
    ran = []
    with pytest.raises(CircuitOpen):
        with db:
            ran.append(1)
    with pytest.raises(CircuitOpen):
        query("select")
    assert ran == []


def test_the_max_failures_th_failure_opens_and_successes_do_not_clear_earlier_ones():
    db = start("db", max_failures=3, window=60, reset_after=60)
    fail(db, 2)
    db.call(lambda: None)  # a success between failures, as in fuse: history kept
    assert db.state == "closed"
    assert db.stats()["failures_in_window"] == 2
    fail(db)
    assert db.state == "open"


def test_a_failure_is_counted_before_the_call_returns_in_every_process():
    db = start("db", max_failures=1, reset_after=60)
    me = otpy.self()

    def other():
        handle = CircuitBreaker("db")
        assert handle.state == "closed"
        otpy.send(me, "ready")
        otpy.receive(match=lambda m: m == "go")
        otpy.send(me, ("state", handle.state))

    pid = otpy.spawn(other)
    expect(lambda m: m == "ready")
    fail(db)
    assert db.state == "open"  # no wait: the failing call returned after the owner knew
    otpy.send(pid, "go")
    assert expect(lambda m: m[:1] == ("state",)) == ("state", "open")


def test_melt_records_a_failure_without_a_call():
    db = start("db", max_failures=2, reset_after=60)
    assert db.melt() == "closed"
    assert db.melt() == "open"
    stats = db.stats()
    assert (stats["calls"], stats["failures"], stats["opened"]) == (0, 2, 1)


def test_ignored_and_unlisted_exceptions_count_neither_way():
    db = start("db", max_failures=1, reset_after=60,
                                   failure_on=(Boom, Harmless), ignore=Harmless)
    with pytest.raises(Harmless):
        db.call(lambda: (_ for _ in ()).throw(Harmless()))
    with pytest.raises(KeyError):
        db.call(lambda: {}["missing"])  # not in failure_on
    stats = db.stats()
    assert (stats["calls"], stats["successes"], stats["failures"]) == (2, 0, 0)
    assert db.state == "closed"
    fail(db)
    assert db.state == "open"


# ---- open, half-open ---------------------------------------------------------------------

def test_open_rejects_without_running_and_says_when_to_retry():
    db = start("db", max_failures=1, reset_after=30)
    fail(db)
    ran = []
    with pytest.raises(CircuitOpen) as info:
        db.call(ran.append, 1)
    assert ran == []
    assert info.value.name == "db"
    assert 0 < info.value.retry_after <= 30
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.name, again.retry_after) == ("db", info.value.retry_after)
    stats = db.stats()
    assert (stats["calls"], stats["rejected"], stats["state"]) == (2, 1, "open")


def test_half_open_by_itself_once_per_opening_then_a_success_closes():
    db = start("db", max_failures=1, reset_after=0.2)
    db.subscribe()
    fail(db)
    opened = event("open")
    assert (opened.name, opened.previous) == ("db", "closed")
    db.melt()
    db.melt()  # more failures while open: no extension, no second timer
    half = event()
    assert (half.state, half.previous) == ("half_open", "open")
    assert half.time - opened.time >= 0.2 - 0.01
    assert db.state == "half_open"
    assert db.call(lambda: "trial") == "trial"
    closed = event()
    assert (closed.state, closed.previous) == ("closed", "half_open")
    no_event()
    assert db.stats()["opened"] == 1


def test_a_failed_trial_opens_again_for_another_reset_after():
    db = start("db", max_failures=1, reset_after=0.15)
    db.subscribe()
    fail(db)
    event("open")
    event("half_open")
    fail(db)
    again = event()
    assert (again.state, again.previous) == ("open", "half_open")
    half = event("half_open")
    assert half.time - again.time >= 0.15 - 0.01
    assert db.stats()["opened"] == 2


def test_half_open_admits_half_open_calls_trials_at_once_and_success_threshold_closes():
    db = start("db", max_failures=1, reset_after=0.1, half_open_calls=1,
                                   success_threshold=2)
    db.subscribe()
    me = otpy.self()

    def trial():
        def wait():
            otpy.send(me, ("in trial", otpy.self()))
            otpy.receive(match=lambda m: m == "finish")
            return "done"
        otpy.send(me, ("result", CircuitBreaker("db").call(wait)))

    fail(db)
    event("half_open")
    pid = otpy.spawn(trial)
    expect(lambda m: m == ("in trial", pid))
    with pytest.raises(CircuitOpen) as info:  # the only slot is taken
        db.call(lambda: None)
    assert info.value.retry_after == 0.0
    otpy.send(pid, "finish")
    assert expect(lambda m: m[:1] == ("result",)) == ("result", "done")
    assert db.state == "half_open"  # one success of two
    db.call(lambda: None)
    assert event("closed").previous == "half_open"


# ---- reset, disable, enable --------------------------------------------------------------

def test_reset_closes_at_once_and_a_stale_timer_never_acts():
    db = start("db", max_failures=1, reset_after=0.3)
    db.subscribe()
    fail(db)
    event("open")
    assert db.reset() == "closed"
    assert event().state == "closed"
    fail(db)  # a new opening; the first one's timer must not make this one half-open early
    second = event("open")
    half = event("half_open")
    assert half.time - second.time >= 0.3 - 0.01
    no_event()


def test_reset_forgets_failures_while_closed():
    db = start("db", max_failures=2, reset_after=60)
    fail(db)
    db.reset()
    fail(db)
    assert db.state == "closed"


def test_disable_holds_it_open_whatever_happens_until_enable():
    db = start("db", max_failures=1, reset_after=0.05)
    db.subscribe()
    assert db.disable() == "disabled"
    assert event() == BreakerEvent("db", "disabled", "closed", pytest.approx(0, abs=1e12))
    with pytest.raises(CircuitOpen) as info:
        db.call(lambda: None)
    assert info.value.retry_after is None
    db.melt()
    assert db.reset() == "disabled"
    kill_owner("db")
    assert db.state == "disabled"  # the replacement resumes from the shared page
    with pytest.raises(CircuitOpen):
        db.call(lambda: None)
    assert db.enable() == "closed"
    assert event().state == "closed"
    assert db.enable() == "closed"  # not disabled: nothing happens, no event
    no_event()
    db.call(lambda: None)
    assert db.stats()["failures_in_window"] == 0


def test_enable_clears_earlier_failures():
    db = start("db", max_failures=2, reset_after=60)
    fail(db)
    db.disable()
    db.enable()
    fail(db)
    assert db.state == "closed"


def test_fault_rate_one_rejects_every_closed_call():
    db = start("chaos", fault_rate=1.0)
    with pytest.raises(CircuitOpen) as info:
        db.call(lambda: None)
    assert info.value.retry_after == 0.0
    assert db.state == "closed"
    assert db.stats()["rejected"] == 1


def test_fault_rate_rejects_some_but_not_all():
    db = start("chaos", fault_rate=0.5)
    outcomes = set()
    for _ in range(200):  # P(all one way) = 2 * 2**-200
        try:
            db.call(lambda: None)
            outcomes.add("ran")
        except CircuitOpen:
            outcomes.add("rejected")
    assert outcomes == {"ran", "rejected"}


# ---- a handle by name ----------------------------------------------------------------------

def test_a_handle_is_picklable_and_works_by_name_in_another_process():
    db = start("db", max_failures=1, reset_after=60)
    me = otpy.self()
    copy = pickle.loads(pickle.dumps(db))
    assert copy == db and copy.name == "db"
    otpy.spawn(lambda h: otpy.send(me, ("got", h.call(lambda: os.getpid()))), db)
    got = expect(lambda m: m[:1] == ("got",))
    assert got[1] != os.getpid()
    pid, ref = otpy.spawn_monitor(lambda h: h.melt(), db)
    assert expect_down(ref).reason == "normal"
    assert db.state == "open"  # the other process's melt opened it for this one too


# ---- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options, error, word", [
    ({"max_failures": 0}, ValueError, "max_failures"),
    ({"max_failures": 1.5}, TypeError, "max_failures"),
    ({"window": 0}, ValueError, "window"),
    ({"window": "10"}, TypeError, "window"),
    ({"reset_after": -1}, ValueError, "reset_after"),
    ({"half_open_calls": 0}, ValueError, "half_open_calls"),
    ({"success_threshold": True}, TypeError, "success_threshold"),
    ({"failure_on": "Exception"}, TypeError, "failure_on"),
    ({"ignore": (int,)}, TypeError, "ignore"),
    ({"fault_rate": 1.5}, ValueError, "fault_rate"),
])
def test_invalid_options_are_refused_by_name(options, error, word):
    with pytest.raises(error, match=word):
        CircuitBreaker.start_link("db", **options)
    with pytest.raises(error, match=word):
        CircuitBreaker.child_spec("db", **options)
    assert owner_pid("db") is None


def test_a_bad_name_is_refused():
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker.start_link("")
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker(42)




# ---- asyncio --------------------------------------------------------------------------------

def test_an_async_def_is_guarded_on_the_awaited_outcome():
    """@breaker on an async def counts what the await ends with, not the
    coroutine's creation; an open breaker refuses before the body runs."""
    import asyncio

    db = start("db", max_failures=2, reset_after=60)
    ran = []

    @db
    async def query(sql):
        ran.append(sql)
        await asyncio.sleep(0)
        if sql == "bad":
            raise Boom(sql)
        return sql.upper()

    async def scenario():
        assert await query("select") == "SELECT"
        for _ in range(2):
            with pytest.raises(Boom):
                await query("bad")
        with pytest.raises(CircuitOpen):
            await query("never")

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert query.__name__ == "query"
    assert ran == ["select", "bad", "bad"] and db.state == "open"
    with pytest.raises(TypeError, match="generator"):
        @db
        async def stream():
            yield 1


def test_async_with_and_a_half_open_trial_from_asyncio():
    import asyncio

    db = start("db", max_failures=1, reset_after=0.2)
    db.subscribe()

    async def failing():
        with pytest.raises(Boom):
            async with db:
                async with db:  # nested in one task: each block counted once
                    pass
                raise Boom("down")

    asyncio.run(asyncio.wait_for(failing(), DEADLINE))
    event("open")
    event("half_open")

    async def trial():
        async def ok():
            return "trial"
        return await db.acall(ok)

    assert asyncio.run(asyncio.wait_for(trial(), DEADLINE)) == "trial"
    assert event().state == "closed"
    stats = db.stats()
    assert stats["opened"] == 1
