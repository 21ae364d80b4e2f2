"""The session pool: each bullet of the issue's semantics, with real SIGKILLs."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import traceback

import otpy
import pytest
from otpy import lowlevel
from otpy.testing import wait_for
from otpy_pool import (CommandTimeout, Pool, PoolError, PoolEvent, PoolOverloaded, PoolStatus,
                       PoolTimeout, PoolUnavailable, SessionLost, SessionNotFound, UnknownCommand,
                       WorkerCrashed)

from helpers import DEADLINE, expect, expect_down, in_thread, sigkill
from pool_workers import Notes, SlowInit, event

pytestmark = pytest.mark.layer("full")  # real pool workers


@pytest.fixture(autouse=True)
def _no_stale_events():
    """Events are messages to the test's own process: none crosses tests."""
    lowlevel.flush(lambda m: isinstance(m, PoolEvent))
    yield
    lowlevel.flush(lambda m: isinstance(m, PoolEvent) or
                   (type(m) is tuple and m[:1] in (("holding",), ("ran",), ("health_checked",))))


def start(**opts) -> Pool:
    opts.setdefault("size", 2)
    return Pool.start_link(Notes, **opts)




# ---- sessions ----------------------------------------------------------------------

def test_sessions_bind_to_the_least_loaded_worker_and_stay_there():
    pool = start()
    assert pool.execute("add", "a1", session="a") == 1
    assert pool.execute("add", "b1", session="b") == 1
    wa, wb = pool.worker_of("a"), pool.worker_of("b")
    assert {wa, wb} == set(pool.workers()) and wa != wb  # one session each
    for n in range(2, 6):
        assert pool.execute("add", f"a{n}", session="a") == n
        assert pool.execute("whoami", session="a") == wa
    assert pool.execute("notes", session="a") == ["a1", "a2", "a3", "a4", "a5"]  # in order
    assert pool.execute("notes", session="b") == ["b1"]
    assert pool.status().sessions == 2
    pool.stop()


def test_a_session_never_sees_another_sessions_state():
    pool = start(size=1)
    pool.execute("add", "secret", session="a")
    assert pool.execute("state", session="b") == {}
    assert pool.execute("state") == {}  # a session-less command has its own empty state
    assert pool.execute("ping", session="b") == ("pong", "notes", "b")
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def test_end_session_drops_the_state_in_the_worker():
    pool = start(size=1)
    pool.execute("add", "x", session="s")
    pool.end_session("s")
    assert pool.worker_of("s") is None and pool.status().sessions == 0
    assert pool.execute("notes", session="s") == []  # a new session, empty
    with pytest.raises(SessionNotFound, match="nope"):
        pool.end_session("nope")
    with pool.session("t") as s:
        s.execute("add", "y")
        assert s.execute("notes") == ["y"]
    assert pool.worker_of("t") is None
    with pytest.raises(SessionNotFound):
        pool.end_session("t")
    pool.stop()


def test_a_bound_session_does_not_go_through_the_pool_server():
    """With the pool's server stopped (SIGSTOP), a bound session's commands
    still run: caller to worker and back."""
    pool = start(size=1)
    pool.execute("add", "x", session="s")
    server = otpy.whereis(pool.name)
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        assert pool.execute("add", "y", session="s") == 2
        assert pool.execute("notes", session="s") == ["x", "y"]
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    assert pool.status().total_commands == 3  # read from the worker's counts
    pool.stop()


def test_counts_are_exact_without_a_message_to_the_server_even_after_a_sigkill():
    """A worker counts in shared memory the server reads: commands run while
    the server is stopped, by a worker SIGKILLed before the server runs
    again, are all counted (the failing one as an error too)."""
    pool = start(size=1)
    pool.execute("add", "x", session="s")
    server = otpy.whereis(pool.name)
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        for note in "yz":
            pool.execute("add", note, session="s")
        with pytest.raises(KeyError):
            pool.execute("fail", "k", session="s")
        victim = pool_worker_pid(pool, "s")
        ref = otpy.monitor(victim)
        os.kill(victim.os_pid, signal.SIGKILL)
        expect_down(ref)
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    status = pool.status()
    assert (status.total_commands, status.errors, status.worker_restarts) == (5, 1, 1)
    assert pool.execute("notes", session="s") == ["x", "y", "z"]  # replayed: the log is whole
    pool.stop()


def pool_worker_pid(pool: Pool, session) -> otpy.Pid:
    """The session's worker, asked of the worker itself (the server may be stopped)."""
    return pool.execute("whoami", session=session)


# ---- pipelined: execute_many -------------------------------------------------------------

def test_execute_many_runs_in_order_on_the_session_and_counts_each_command():
    pool = start(size=2)
    calls = [(f"n{i}",) for i in range(200)]
    assert pool.execute_many("add", calls, session="s", window=16) == list(range(1, 201))
    assert pool.execute("notes", session="s") == [c[0] for c in calls]
    assert pool.execute_many("echo", [(1,), (2, 3), ()]) == [((1,), {}), ((2, 3), {}), ((), {})]
    assert pool.execute_many("ping", []) == []
    assert pool.status().total_commands == 204
    sigkill(pool.worker_of("s"))  # its replay log holds all 200: pipelined entries too
    assert pool.execute("notes", session="s") == [c[0] for c in calls]
    pool.stop()


def test_execute_many_errors_in_place_or_the_first_raised():
    pool = start(size=1)
    calls = [("a",), ("b",)]
    out = pool.execute_many("fail", calls, return_exceptions=True)
    assert [type(e) for e in out] == [KeyError, KeyError] and out[1].args == ("b",)
    with pytest.raises(KeyError, match="'a'"):
        pool.execute_many("fail", calls, session="s")
    with pytest.raises(UnknownCommand):
        pool.execute_many("nope", [()])
    assert pool.status().errors == 5
    pool.stop()


def test_execute_many_bad_input_names_the_problem():
    pool = start(size=1)
    with pytest.raises(TypeError, match="tuple of arguments"):
        pool.execute_many("ping", [1])
    with pytest.raises(ValueError, match="window"):
        pool.execute_many("ping", [()], window=0)
    with pytest.raises(TypeError, match="hashable"):
        pool.execute_many("ping", [()], session=[])
    with pytest.raises(otpy.SerializationError):
        pool.execute_many("echo", [((n for n in ()),)])  # only that one is not sent
    assert pool.status().total_commands == 0  # nothing was sent
    pool.stop()


def test_execute_many_a_worker_death_fails_the_running_command_only():
    """The command that killed its worker gets WorkerCrashed; those queued
    behind it never ran, and run once each on the session's new worker,
    after the replay."""
    pool = start(size=2)
    calls = [("a",), ("b",), ("exit",), ("c",), ("d",)]
    out = pool.execute_many("add_or_exit", calls, session="s", return_exceptions=True)
    assert out[:2] == [1, 2] and out[3:] == [3, 4]
    assert isinstance(out[2], WorkerCrashed) and out[2].reason == ("exit", 3)
    assert pool.execute("notes", session="s") == ["a", "b", "c", "d"]
    status = pool.status()
    assert (status.worker_restarts, status.sessions_recovered) == (1, 1)
    assert (status.total_commands, status.errors) == (6, 1)  # 5 in the batch; replays are not
    pool.stop()


def test_execute_many_a_command_past_its_timeout_replaces_the_worker_and_the_rest_run():
    pool = start(size=2)
    pool.subscribe()
    old = set(pool.workers())
    out = pool.execute_many("nap", [(0,), (60,), (0,)], timeout=2, return_exceptions=True)
    assert out[0] == 0 and out[2] == 0 and isinstance(out[1], CommandTimeout)
    status = pool.status()
    assert (status.timeouts, status.worker_restarts) == (1, 1)
    event("worker_started")  # the replacement starts once the caller has its answer
    assert len(set(pool.workers()) - old) == 1
    assert lowlevel.flush(lambda m: not isinstance(m, PoolEvent)) == 0  # no stray replies
    pool.stop()


def test_different_sessions_run_in_parallel_on_different_workers():
    me = otpy.self()
    pool = start()
    pool.execute("ping", session="a")
    pool.execute("ping", session="b")
    held = in_thread(pool.execute, "hold", me, "a", session="a")
    _, _, worker_a = expect(lambda m: m[:2] == ("holding", "a"))
    assert pool.execute("ping", session="b") == ("pong", "notes", "b")  # not blocked by a
    otpy.send(worker_a, ("release", "a"))
    assert held() == "a"
    pool.stop()


# ---- waiting ---------------------------------------------------------------------

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


# ---- deadlines and crashes ------------------------------------------------------------

def test_a_command_past_its_deadline_gets_command_timeout_and_its_worker_is_replaced():
    me = otpy.self()
    pool = start(size=1)
    pool.execute("add", "kept", session="other")
    victim = pool.workers()[0]
    with pytest.raises(CommandTimeout) as info:
        pool.execute("hold", me, "forever", session="s", timeout=0.3)
    assert isinstance(info.value, otpy.Timeout)
    assert "ran past 300 ms;" in str(info.value)  # rounded for a person
    assert not otpy.is_alive(victim) and victim not in pool.workers()
    status = pool.status()
    assert status.timeouts == 1 and status.worker_restarts == 1 and status.errors == 1
    assert pool.execute("notes", session="other") == ["kept"]  # treated as after a crash
    assert pool.status().sessions_recovered == 1
    with pytest.raises(CommandTimeout):  # session-less, and the pool's own default
        Pool.start_link(Notes, size=1, command_timeout=0.2, name="p2").execute(
            "hold", me, "forever2")
    Pool("p2").stop()
    pool.stop()


def test_a_killed_worker_fails_only_its_own_command_and_sessions_replay():
    me = otpy.self()
    pool = start()
    pool.subscribe()
    pool.execute("add", "one", session="a")
    pool.execute("add", "two", session="a")
    pool.execute("ping", session="plain")  # no replay commands: re-bound silently, empty
    pool.execute("ping", session="b")
    wa = pool.worker_of("a")
    if pool.worker_of("plain") != wa:  # put "plain" on a's worker
        pool.end_session("plain")
        pool.end_session("b")
        pool.execute("ping", session="b")
        pool.execute("ping", session="plain")
    assert pool.worker_of("plain") == wa and pool.worker_of("b") != wa
    running = in_thread(pool.execute, "hold", me, "x", session="a")
    expect(lambda m: m[:2] == ("holding", "x"))
    os.kill(wa.os_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        running()
    assert info.value.reason == "killed"
    assert pool.execute("ping", session="b") == ("pong", "notes", "b")  # others keep serving
    event("worker_started")
    assert pool.execute("notes", session="a") == ["one", "two"]  # replayed in order first
    assert pool.execute("state", session="plain") == {}
    assert pool.worker_of("a") not in (wa, None)
    status = pool.status()
    assert status.worker_restarts == 1 and status.sessions_recovered == 1
    assert status.sessions_lost == 0 and len(pool.workers()) == 2
    pool.stop()


def test_a_worker_that_exits_by_itself_is_a_crash_too():
    pool = start(size=1)
    with pytest.raises(WorkerCrashed) as info:
        pool.execute("die")
    assert info.value.reason == ("exit", 3)
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def test_a_failed_replay_is_session_lost_and_the_session_starts_empty(otpy_tree):
    path = os.path.join(otpy_tree.tmp_path, "program.txt")
    with open(path, "w") as f:
        f.write("v1")
    pool = start(size=1)
    pool.subscribe()
    assert pool.execute("load", path, session="s") == "v1"
    os.remove(path)
    sigkill(pool.worker_of("s"))
    event("worker_started")
    with pytest.raises(SessionLost) as info:
        pool.execute("state", session="s")
    assert "FileNotFoundError" in repr(info.value.cause) or \
        isinstance(info.value.cause, FileNotFoundError)
    assert event("session_lost").session == "s"
    assert pool.execute("state", session="s") == {}  # empty next time
    assert pool.status().sessions_lost == 1
    pool.stop()


# ---- errors ---------------------------------------------------------------------------

def test_a_command_error_reaches_the_caller_as_itself_with_its_remote_traceback():
    pool = start(size=1)
    pool.execute("add", "kept", session="s")
    worker = pool.workers()[0]
    with pytest.raises(KeyError) as info:
        pool.execute("fail", "missing", session="s")
    text = "".join(traceback.format_exception(info.value))
    assert "pool_workers.py" in text and "in fail" in text
    assert pool.workers() == [worker]  # the worker and its sessions carry on
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.status().errors == 1
    pool.stop()


def test_only_commands_can_be_executed():
    pool = start(size=1)
    for name in ("not_a_command", "init", "health_check", "nope"):
        with pytest.raises(UnknownCommand, match=name):
            pool.execute(name)
    with pytest.raises(TypeError, match="command"):
        pool.execute(42)
    with pytest.raises(ValueError, match="timeout"):
        pool.execute("ping", timeout=0)
    with pytest.raises(TypeError, match="timeout"):
        pool.execute("ping", session="s", timeout="5")
    with pytest.raises(TypeError, match="session id must be hashable"):
        pool.execute("ping", session=["s"])
    with pool.checkout() as w:
        with pytest.raises(ValueError, match="timeout"):
            w.execute("ping", timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        with pool.checkout(timeout="soon"):
            pass
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def test_unpicklable_arguments_fail_in_the_caller_and_nothing_is_sent():
    pool = start(size=1)
    pool.execute("ping", session="s")
    before = pool.status().total_commands
    with pytest.raises(otpy.SerializationError):
        pool.execute("echo", (n for n in ()), session="s")
    with pytest.raises(otpy.SerializationError):
        pool.execute("echo", (n for n in ()))
    with pytest.raises(otpy.SerializationError, match="cannot be sent"):
        pool.execute("unpicklable_result")
    assert pool.status().total_commands == before + 1  # only the last one ran
    assert pool.status().errors == 1  # and it ended in an error: its result never came back
    assert pool.status().busy == 0
    pool.stop()


def test_errors_are_otpy_errors():
    for cls in (PoolTimeout, CommandTimeout, PoolOverloaded, PoolUnavailable, WorkerCrashed,
                SessionLost, SessionNotFound, UnknownCommand):
        assert issubclass(cls, PoolError)
    assert issubclass(PoolError, otpy.OtpyError)
    assert issubclass(PoolTimeout, otpy.Timeout) and issubclass(CommandTimeout, otpy.Timeout)
    crashed = pickle.loads(pickle.dumps(WorkerCrashed("killed")))
    assert crashed.reason == "killed" and "killed" in str(crashed)
    lost = pickle.loads(pickle.dumps(SessionLost("s", "cause")))
    assert (lost.session, lost.cause) == ("s", "cause")
    unavailable = pickle.loads(pickle.dumps(PoolUnavailable(KeyError("k"), "none")))
    assert isinstance(unavailable.cause, KeyError) and str(unavailable) == "none"


# ---- options ---------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, error", [
    ("size", 0, ValueError), ("size", "2", TypeError), ("max_overflow", -1, ValueError),
    ("overflow_idle", 0, ValueError), ("lazy", "yes", TypeError),
    ("strategy", "random", ValueError), ("checkout_timeout", -1, ValueError),
    ("max_queue", 1.5, TypeError), ("command_timeout", 0, ValueError),
    ("health_interval", "1", TypeError), ("health_timeout", 0, ValueError),
    ("max_commands", 0, ValueError), ("max_memory", True, TypeError), ("name", 3, TypeError),
])
def test_a_bad_option_is_named_before_anything_starts(option, value, error):
    before = otpy.processes()
    with pytest.raises(error, match=option):
        Pool.start_link(Notes, **{option: value})
    with pytest.raises(error, match=option):
        Pool.child_spec(Notes, **{option: value})
    assert otpy.processes() == before


def test_bad_worker_args_and_unknown_options():
    with pytest.raises(TypeError, match="Worker subclass"):
        Pool.start_link(dict)
    with pytest.raises(TypeError, match="args"):
        Pool.start_link(Notes, args="x")
    with pytest.raises(TypeError, match="kwargs"):
        Pool.start_link(Notes, kwargs=[1])
    with pytest.raises(TypeError, match="colour"):
        Pool.child_spec(Notes, colour="red")


def test_defaults():
    pool = Pool.start_link(Notes)
    status = pool.status()
    assert status.size == os.cpu_count() and status.workers == os.cpu_count()
    settings = pool._settings()
    assert (settings.command_timeout, settings.checkout_timeout) == (None, 5.0)
    pool.stop()


# ---- init failures ---------------------------------------------------------------------

def test_start_link_raises_start_error_when_the_first_workers_cannot_start(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "refuse")
    open(flag, "w").close()
    with pytest.raises(otpy.StartError, match="init refused"):
        Pool.start_link(Notes, kwargs={"fail_if": flag}, size=1)
    assert otpy.whereis("otpy_pool") is None


def test_a_worker_init_is_bounded_by_its_class_init_timeout():
    with pytest.raises(otpy.StartError, match="did not finish init within 0.3s"):
        Pool.start_link(SlowInit, size=1)
    bad = type("BadTimeout", (Notes,), {"init_timeout": -1})
    with pytest.raises(ValueError, match="BadTimeout.init_timeout"):
        Pool.start_link(bad)


# ---- health, recycling, overflow, lazy, strategy ------------------------------------------

def test_an_unhealthy_worker_is_replaced_and_its_sessions_move_by_replay(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1, health_timeout=2.0)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    sick = pool.workers()[0]
    pool.execute("set_unhealthy_if", flag, session="s")
    open(flag, "w").close()
    assert event("health_failed").worker == sick
    os.remove(flag)
    event("worker_started")
    assert event("worker_exited").worker == sick  # retired once idle
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.worker_of("s") != sick
    status = pool.status()
    assert status.worker_restarts == 0 and status.sessions_recovered == 1
    pool.stop()


def test_a_hung_health_check_replaces_the_worker(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "hang")
    pool = start(size=1, health_interval=0.05, health_timeout=0.2)
    pool.subscribe()
    hung = pool.workers()[0]
    pool.execute("set_hung_health_if", flag, session="s")
    open(flag, "w").close()
    assert event("health_failed").detail == "no answer"
    assert event("worker_exited").detail == "('shutdown', 'health_check_timeout')"
    event("worker_started")
    assert hung not in pool.workers()
    os.remove(flag)
    pool.stop()


def test_health_checks_never_kill_a_busy_worker():
    """A command longer than health_timeout runs to its end: busy workers are
    not checked (a hung command is command_timeout's business)."""
    me = otpy.self()
    pool = start(size=2, health_interval=0.05, health_timeout=0.1,
                 kwargs={"report_to": me})
    pool.subscribe()
    pool.execute("ping", session="long")
    busy = pool.worker_of("long")
    idle = next(w for w in pool.workers() if w != busy)
    running = in_thread(pool.execute, "hold", me, "h", session="long")
    expect(lambda m: m[:2] == ("holding", "h"))
    lowlevel.flush(lambda m: m == ("health_checked", idle))
    for _ in range(5):  # five ticks: far past health_timeout
        expect(lambda m: m == ("health_checked", idle))
    otpy.send(busy, ("release", "h"))
    assert running() == "h"
    assert set(pool.workers()) == {busy, idle}
    assert lowlevel.flush(lambda m: isinstance(m, PoolEvent) and m.kind == "health_failed") == 0
    pool.stop()


def test_max_commands_recycles_a_worker_without_counting_a_restart():
    pool = start(size=1, max_commands=3)
    pool.subscribe()
    first = pool.workers()[0]
    pool.execute("add", "a", session="s")
    pool.execute("add", "b", session="s")
    pool.execute("ping")
    assert event("recycled").worker == first
    assert event("worker_exited").worker == first
    assert pool.execute("notes", session="s") == ["a", "b"]  # moved by replay
    assert pool.worker_of("s") != first
    status = pool.status()
    assert status.worker_restarts == 0 and status.total_commands == 4
    pool.stop()


def test_max_memory_recycles_a_worker_past_it():
    pool = start(size=1, max_memory=10**12)
    worker = pool.workers()[0]
    pool.execute("grow", 10)
    assert pool.workers() == [worker]
    pool2 = Pool.start_link(Notes, size=1, max_memory=1, name="tiny")
    pool2.subscribe()
    first = pool2.workers()[0]
    pool2.execute("ping")
    assert event("recycled").worker == first
    pool2.stop()
    pool.stop()


def test_overflow_workers_start_under_load_and_stop_when_idle():
    pool = start(size=1, max_overflow=1, overflow_idle=0.2)
    pool.subscribe()
    with pool.checkout():
        with pool.checkout() as extra:
            assert pool.status().overflow == 1 and len(pool.workers()) == 2
        event("worker_started")
    gone = event("worker_exited")
    assert gone.worker == extra.pid
    status = pool.status()
    assert status.overflow == 0 and status.worker_restarts == 0 and len(pool.workers()) == 1
    pool.stop()


def test_lazy_pools_start_workers_on_demand_up_to_size_plus_overflow():
    pool = start(size=2, lazy=True, max_overflow=1, checkout_timeout=0.2)
    assert pool.workers() == []
    pool.execute("ping")
    assert len(pool.workers()) == 1
    with pool.checkout(), pool.checkout(), pool.checkout():
        assert len(pool.workers()) == 3 and pool.status().overflow == 1
        with pytest.raises(PoolTimeout):
            pool.execute("ping")
    pool.stop()


@pytest.mark.parametrize("strategy", ["lifo", "fifo"])
def test_strategy_picks_the_idle_worker(strategy):
    pool = start(size=2, strategy=strategy)
    with pool.checkout() as a:
        with pool.checkout() as b:
            pass
    # b was returned first, then a: lifo serves a (last in), fifo serves b
    with pool.checkout() as next_one:
        assert next_one.pid == (a.pid if strategy == "lifo" else b.pid)
    pool.stop()


# ---- the subtree -----------------------------------------------------------------------

def test_under_a_supervisor_by_name_and_a_server_kill(otpy_tree):
    otpy_tree.start_child(Pool.child_spec(Notes, size=2, name="programs"))
    pool = Pool("programs")
    assert pool.execute("add", "kept", session="s") == 1
    worker = pool.worker_of("s")
    sigkill(otpy.whereis("programs"))
    # the replacement adopts the workers alive, with their sessions and replay logs
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.worker_of("s") == worker and len(pool.workers()) == 2
    sigkill(worker)
    assert pool.execute("notes", session="s") == ["kept"]
    pool.stop()


def test_the_pool_shows_in_the_observer():
    from otpy.observer import snapshot

    pool = start(size=2, name="observed")
    with pool.checkout():
        rows = list(_flatten(snapshot()["tree"]))
        server = next(r for r in rows if r["name"] == "observed")
        assert "in use 1/2" in server["behaviour"]
        # the pool's supervisor holds the workers' supervisor, which holds the workers
        pool_sup = next(r for r in rows if server in r["children"])
        workers_sup = next(r for r in pool_sup["children"] if r["name"] == "observed.workers")
        assert sorted(r["pid"] for r in workers_sup["children"]) == \
            sorted(p.serial for p in pool.workers())
        assert all(r["behaviour"] == "otpy_pool.Worker:Notes" for r in workers_sup["children"])
        assert pool_sup["name"] == "observed.sup"  # named after the pool
        # and as text, as docs/pool.md says (--once; the live view has the same columns)
        once = subprocess.run([sys.executable, "-m", "otpy.observer", otpy.self().node, "--once"],
                              capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stderr
        lines = once.stdout.splitlines()
        assert "BEHAVIOUR" in lines[2]
        assert any(line.startswith("observed.sup ") and line.endswith("Supervisor")
                   for line in lines)
        assert any("└─ observed " in line and line.endswith("otpy_pool.Pool in use 1/2")
                   for line in lines)
        assert sum(line.endswith("otpy_pool.Worker:Notes") for line in lines) == 2
    pool.stop()


def _flatten(rows):
    for row in rows:
        yield row
        yield from _flatten(row.get("children", []))


def test_stop_leaves_nothing_behind(otpy_tree):
    pool = start(size=2, name="short")
    os_pids = [p.os_pid for p in pool.workers()]
    pool.stop()
    assert otpy.whereis("short") is None
    assert otpy_tree.processes() == [otpy_tree.supervisor] or \
        all(p.os_pid not in os_pids for p in otpy_tree.processes())
    with pytest.raises(PoolError, match="not running"):
        pool.execute("ping")


# ---- handles ----------------------------------------------------------------------

def _use_pool(pool: Pool, report_to: otpy.Pid) -> None:
    otpy.send(report_to, ("from_process", pool.execute("notes", session="shared"),
                          pool.execute("ping")))


def test_a_handle_is_picklable_and_works_from_threads_and_other_processes():
    pool = start(size=2, name="shared_pool")
    pool.execute("add", "x", session="shared")
    copy = pickle.loads(pickle.dumps(pool))
    assert copy == pool
    otpy.spawn(_use_pool, copy, otpy.self())
    assert expect(lambda m: m[0] == "from_process")[1:] == (["x"], ("pong", "notes", None))
    joins = [in_thread(lambda i=i: [pool.execute("add", f"{i}.{n}", session=f"t{i}")
                                    for n in range(5)]) for i in range(4)]
    assert [join() for join in joins] == [[1, 2, 3, 4, 5]] * 4
    for i in range(4):
        assert pool.execute("notes", session=f"t{i}") == [f"{i}.{n}" for n in range(5)]
    pool.stop()


# ---- status and events ------------------------------------------------------------------

def test_status_counts():
    pool = start(size=2)
    assert pool.status() == PoolStatus(size=2, overflow=0, idle=2, busy=0, queued=0,
                                       sessions=0, total_commands=0, errors=0, timeouts=0,
                                       worker_restarts=0, sessions_recovered=0,
                                       sessions_lost=0, workers=2)
    pool.execute("add", "x", session="a")
    with pytest.raises(KeyError):
        pool.execute("fail", "k")
    with pool.checkout():
        status = pool.status()
        assert (status.idle, status.busy, status.sessions) == (1, 1, 1)
    sigkill(pool.worker_of("a"))
    pool.execute("notes", session="a")
    status = pool.status()
    assert (status.total_commands, status.errors, status.worker_restarts,
            status.sessions_recovered) == (3, 1, 1, 1)
    pool.stop()


def test_events_reach_subscribers_until_they_unsubscribe():
    pool = start(size=1)
    pool.subscribe()
    pool.execute("ping", session="s")
    bound = event("session_bound")
    assert bound.session == "s" and bound.worker == pool.workers()[0]
    pool.execute("ping")
    assert event("checkout").worker == event("checkin").worker == bound.worker
    sigkill(bound.worker)
    assert event("worker_exited").worker == bound.worker
    assert event("worker_started").worker != bound.worker
    pool.unsubscribe()
    pool.execute("ping")
    pool.workers()  # every event of that command was sent before this answer
    assert lowlevel.flush(lambda m: isinstance(m, PoolEvent)) == 0
    pool.stop()


# ---- the executor -------------------------------------------------------------------

def _kill_own_process():
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_executor_runs_functions_on_the_workers_and_a_death_fails_only_its_future():
    pool = start(size=2)
    executor = pool.executor()
    assert list(executor.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
    worker_os_pids = {p.os_pid for p in pool.workers()}
    assert executor.submit(os.getpid).result(DEADLINE) in worker_os_pids
    assert executor.submit(lambda x: x * 2, 21).result(DEADLINE) == 42  # dill carries lambdas
    doomed = executor.submit(_kill_own_process)
    with pytest.raises(WorkerCrashed) as info:
        doomed.result(DEADLINE)
    assert info.value.reason == "killed"
    assert executor.submit(abs, -5).result(DEADLINE) == 5  # the executor carries on
    with pytest.raises(ZeroDivisionError):
        executor.submit(divmod, 1, 0).result(DEADLINE)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)
    with pytest.raises(ValueError, match="max_workers"):
        pool.executor(max_workers=0)
    pool.stop()


def test_a_command_timeout_is_an_event():
    me = otpy.self()
    pool = start(size=1)
    pool.subscribe()
    victim = pool.workers()[0]
    with pytest.raises(CommandTimeout):
        pool.execute("hold", me, "t", timeout=0.2)
    timeout = event("timeout")
    assert (timeout.worker, timeout.detail) == (victim, "command")
    pool.stop()


def test_a_retired_workers_sessions_move_at_once_even_while_it_is_held(otpy_tree):
    """Health failed while the worker is checked out: it stops only at
    checkin, but its sessions already run on the replacement."""
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    pool.execute("set_unhealthy_if", flag, session="s")
    with pool.checkout() as held:
        open(flag, "w").close()
        assert event("health_failed").worker == held.pid
        replacement = event("worker_started").worker
        os.remove(flag)
        assert pool.execute("notes", session="s") == ["kept"]  # replayed on the replacement
        assert pool.worker_of("s") == replacement != held.pid
        assert held.execute("ping") == ("pong", "notes", None)  # the holder still has it
    assert event("worker_exited").worker == held.pid  # stopped once returned
    pool.stop()


def test_a_retired_worker_whose_holder_raises_is_killed_at_checkin(otpy_tree):
    """Health failed while the worker is checked out, then the with-body
    raises: its state is unknown, so it is killed at the checkin (it used to
    be left alive, out of service, until the pool stopped)."""
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1)
    pool.subscribe()
    pool.execute("set_unhealthy_if", flag, session="s")
    with pytest.raises(ZeroDivisionError):
        with pool.checkout() as held:
            open(flag, "w").close()
            assert event("health_failed").worker == held.pid
            os.remove(flag)
            1 / 0
    exited = event("worker_exited")
    assert (exited.worker, exited.detail) == (held.pid, "('shutdown', 'checkout_replaced')")
    assert held.pid not in pool.workers()
    pool.stop()


def test_killing_the_pool_server_never_hangs_a_waiting_caller():
    pool = start(size=1, name="waited")
    pool.subscribe()
    with pool.checkout():
        waiting = in_thread(pool.execute, "ping")
        event("queued")
        sigkill(otpy.whereis("waited"))
        try:  # served by the replacement, or a clear error: never a hang
            assert waiting() == ("pong", "notes", None)
        except PoolError:
            pass
    # the tree comes back whole
    assert len(pool.workers()) == 1 and pool.status().size == 1
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def _end_session(pool: Pool, session, report_to: otpy.Pid) -> None:
    pool.end_session(session)
    otpy.send(report_to, ("ended", session))


def test_a_binding_cached_by_a_process_is_checked_by_the_worker():
    """Another process ends the session: this process's cached binding is
    stale, the worker answers that it does not hold it, and the command runs
    in a new session instead of a ghost of the old one."""
    pool = start(size=1)
    pool.execute("add", "old", session="s")
    otpy.spawn(_end_session, pool, "s", otpy.self())
    expect(lambda m: m == ("ended", "s"))
    assert pool.execute("notes", session="s") == []
    assert pool.status().sessions == 1
    pool.stop()


def test_many_worker_deaths_never_make_the_pool_give_up():
    """More deaths than any restart intensity allows: the pool keeps replacing."""
    pool = start(size=1)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    for _ in range(8):
        victim = pool.workers()[0]
        sigkill(victim)
        event("worker_started")
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.status().worker_restarts == 8
    pool.stop()


def test_replays_and_health_checks_do_not_count_toward_max_commands():
    pool = start(size=1, max_commands=3, health_interval=0.05,
                 kwargs={"report_to": otpy.self()})
    pool.subscribe()
    pool.execute("add", "a", session="s")
    pool.execute("add", "b", session="s")
    sigkill(pool.workers()[0])
    fresh = event("worker_started").worker
    assert pool.execute("notes", session="s") == ["a", "b"]  # 2 replays + 1 command
    for _ in range(3):  # health checks of the fresh worker: none counts
        expect(lambda m: m == ("health_checked", fresh))
    pool.execute("ping")
    assert pool.workers() == [fresh]  # 2 commands so far
    pool.execute("ping")  # the 3rd
    assert event("recycled").worker == fresh
    pool.stop()


def test_commands_are_inherited_and_a_redefinition_without_the_mark_is_not_one():
    from otpy_pool import Worker, command

    class Base(Worker):
        @command(replay=True)
        def a(self, session):
            pass

        @command
        def b(self, session):
            pass

    class Derived(Base):
        def b(self, session):  # no longer a command
            pass

        @command
        def c(self, session):
            pass

    assert Derived.commands() == {"a": True, "c": False}
    with pytest.raises(TypeError, match="replay"):
        command(replay="yes")


def test_least_loaded_means_fewest_sessions_then_not_checked_out():
    pool = start(size=3)
    with pool.checkout() as held:
        pool.execute("ping", session="a")
        assert pool.worker_of("a") != held.pid  # no sessions anywhere: a free one
    pool.execute("ping", session="b")
    pool.execute("ping", session="c")
    assert len({pool.worker_of(s) for s in "abc"}) == 3  # one session each
    freed = pool.worker_of("b")
    pool.end_session("b")
    pool.execute("ping", session="e")
    assert pool.worker_of("e") == freed  # the only worker without a session
    pool.stop()
