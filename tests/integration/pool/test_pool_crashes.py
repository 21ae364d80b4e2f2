"""Deadlines and crashes: CommandTimeout kills and replaces the worker, a death
fails only its own command, a failed replay is SessionLost, deaths never make
the pool give up. (Moved from test_pool.py.)"""

from __future__ import annotations

import os
import signal

import otpy
import pytest
from otpy_pool import CommandTimeout, Pool, SessionLost, WorkerCrashed

from helpers import expect, in_thread, sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import Notes, event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


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
