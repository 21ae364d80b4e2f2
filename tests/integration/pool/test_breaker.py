"""CircuitBreaker, in the manner of fuse's suite: a breaker's life through
real processes (melts, blows, heals, resets, disables), its shared state,
and SIGKILL of its owner."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

import otpy
from otpy.testing import synchronize, wait_for
from otpy_pool import (BreakerEvent, BreakerNotRunning, CircuitBreaker, CircuitOpen)

import helpers
from helpers import DEADLINE, expect, expect_down


class Boom(Exception):
    pass


class Harmless(Exception):
    pass


def start(name, **options):
    """A breaker under the test's tree (stopped with it)."""
    helpers.CURRENT_TREE.start_child(CircuitBreaker.child_spec(name, **options))
    return CircuitBreaker(name)


def until(attempt, deadline=DEADLINE):
    """attempt() until it stops raising CircuitOpen; its result."""
    def tried():
        try:
            return (attempt(),)
        except CircuitOpen:
            return None
    return wait_for(tried, timeout=deadline)[0]


def boom(*_args):
    raise Boom("down")


def fail(db, times=1):
    for _ in range(times):
        with pytest.raises(Boom):
            db.call(boom)


def event(state=None):
    return expect(lambda m: isinstance(m, BreakerEvent) and (state is None or m.state == state))


def no_event():
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: isinstance(m, BreakerEvent))


def owner_pid(name):
    return otpy.whereis(name)


def kill_owner(name):
    pid = owner_pid(name)
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)
    return pid


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


def test_a_killed_trial_holder_gives_its_slot_back():
    db = start("db", max_failures=1, reset_after=0.1)
    db.subscribe()
    me = otpy.self()

    def hang():
        CircuitBreaker("db").call(lambda: (otpy.send(me, "in trial"), otpy.receive()))

    fail(db)
    event("half_open")
    pid = otpy.spawn(hang)
    ref = otpy.monitor(pid)
    expect(lambda m: m == "in trial")
    with pytest.raises(CircuitOpen):
        db.call(lambda: None)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)
    # The owner hears of the death on its own stream, in no set order with
    # ours: retry until it has (a deadline, not a sleep to synchronize).
    assert until(lambda: db.call(lambda: "mine")) == "mine"
    assert db.state == "closed"


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


# ---- shared across processes ---------------------------------------------------------------

def test_failures_from_many_processes_at_once_are_all_counted_and_open_it_for_all():
    db = start("db", max_failures=40, window=60, reset_after=60)
    me = otpy.self()

    def worker():
        handle = CircuitBreaker("db")
        otpy.receive(match=lambda m: m == "go")
        for _ in range(10):
            try:
                handle.call(boom)
            except Boom:
                pass
        for _ in range(5):
            try:
                handle.call(lambda: None)
            except CircuitOpen:  # once the 40th failure anywhere opened it
                pass
        otpy.send(me, ("done", otpy.self()))
        otpy.receive(match=lambda m: m == "exit")

    pids = [otpy.spawn(worker) for _ in range(4)]
    for pid in pids:
        otpy.send(pid, "go")
    for pid in pids:
        expect(lambda m, p=pid: m == ("done", p))
    stats = db.stats()
    assert stats["failures"] == 40
    assert stats["state"] == "open" and stats["opened"] == 1
    assert stats["calls"] == 60
    assert stats["successes"] + stats["rejected"] == 20
    refs = [otpy.monitor(pid) for pid in pids]
    for pid in pids:
        otpy.send(pid, "exit")
    for ref in refs:
        expect_down(ref)
    assert db.stats()["calls"] == 60  # counts of processes gone are kept


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


def test_events_go_to_the_subscribing_process():
    db = start("db", max_failures=1, reset_after=60)
    me = otpy.self()

    def listener():
        CircuitBreaker("db").subscribe()
        otpy.send(me, "subscribed")
        otpy.send(me, ("heard", otpy.receive(match=lambda m: isinstance(m, BreakerEvent))))

    otpy.spawn(listener)
    expect(lambda m: m == "subscribed")
    db.melt()
    heard = expect(lambda m: m[:1] == ("heard",))[1]
    assert (heard.name, heard.state, heard.previous) == ("db", "open", "closed")


# ---- the owner is supervised ------------------------------------------------------------------

def test_sigkill_of_the_owner_callers_never_hang_and_the_replacement_keeps_the_state():
    db = start("db", max_failures=2, window=60, reset_after=60)
    fail(db)
    db.call(lambda: None)
    old = kill_owner("db")
    assert db.call(lambda: "closed path needs no owner") == "closed path needs no owner"
    fail(db)  # waits for the replacement, then counts: the first failure was kept
    assert owner_pid("db") not in (None, old)
    stats = db.stats()
    assert stats["state"] == "open"
    assert (stats["failures"], stats["opened"]) == (2, 1)
    assert stats["calls"] == 4 and stats["successes"] == 2
    kill_owner("db")
    with pytest.raises(CircuitOpen) as info:
        db.call(lambda: None)
    assert 50 < info.value.retry_after <= 60  # still the same opening, same deadline


def test_an_open_breaker_resumed_after_a_kill_still_half_opens_on_time():
    db = start("db", max_failures=1, reset_after=0.3)
    db.subscribe()
    fail(db)
    opened = event("open")
    kill_owner("db")
    half = event("half_open")  # the replacement re-armed the timer, and kept the subscriber
    assert half.time - opened.time >= 0.3 - 0.01


def test_processes_calling_through_a_kill_all_finish():
    db = start("db", max_failures=10_000, window=60, reset_after=60)
    me = otpy.self()

    def caller():
        handle = CircuitBreaker("db")
        otpy.send(me, ("running", otpy.self()))
        done = 0
        for _ in range(300):
            try:
                handle.call(boom)
            except Boom:
                done += 1
        otpy.send(me, ("done", done))

    pids = [otpy.spawn(caller) for _ in range(3)]
    for pid in pids:
        expect(lambda m, p=pid: m == ("running", p))
    kill_owner("db")
    total = sum(expect(lambda m: m[:1] == ("done",), timeout=DEADLINE * 3)[1] for _ in pids)
    assert total == 900
    assert db.stats()["failures"] >= 900 - 3  # at most one in flight per caller at the kill


def test_stop_ends_it_and_a_handle_then_says_it_is_not_running():
    db = CircuitBreaker.start_link("db")
    supervisors = len(otpy.processes())
    db.stop()
    assert owner_pid("db") is None
    assert len(otpy.processes()) == supervisors - 2
    late = CircuitBreaker("db", timeout=0.2)
    with pytest.raises(BreakerNotRunning):
        late.call(lambda: None)
    with pytest.raises(BreakerNotRunning):
        db.stats()


def test_child_spec_runs_it_under_your_supervisor():
    sup = otpy.Supervisor.start_link([CircuitBreaker.child_spec("db", max_failures=1)])
    db = CircuitBreaker("db")
    db.melt()
    assert db.state == "open"
    assert [c.id for c in otpy.Supervisor.which_children(sup)] == ["db"]
    otpy.stop(sup)


def test_a_second_breaker_of_the_same_name_is_refused():
    db = CircuitBreaker.start_link("db")
    with pytest.raises(otpy.AlreadyStarted):
        CircuitBreaker.start_link("db")
    db.stop()


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


def test_threads_of_one_process_share_its_counters_without_losing_any():
    db = start("db")
    db.call(lambda: None)  # connect before the threads start

    def calls():
        for _ in range(5000):
            db.call(lambda: None)

    done = synchronize({n: calls for n in range(4)}, timeout=DEADLINE, in_processes=False)
    assert done == {n: None for n in range(4)}
    stats = db.stats()
    assert (stats["calls"], stats["successes"]) == (20001, 20001)
