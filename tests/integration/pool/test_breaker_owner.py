"""The circuit breaker's owner (``_breaker_owner``): the counts and events it
keeps for every process that uses the breaker, trial slots of processes that
die, and its supervision (SIGKILL, a replacement resuming from the page's
snapshot, stop, child_spec)."""

from __future__ import annotations

import os
import signal

import pytest

import otpy
from otpy.testing import synchronize
from otpy_pool import BreakerEvent, BreakerNotRunning, CircuitBreaker, CircuitOpen

from breakers import Boom, boom, event, fail, kill_owner, owner_pid, start, until
from helpers import DEADLINE, expect, expect_down


# ---- counts and events from every process -----------------------------------------------

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


# ---- the owner is supervised ------------------------------------------------------------

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
