"""Sessions: bound to the least loaded worker, private state, one round trip to
their worker (the server stopped), a binding checked by the worker, parallel
sessions. (Moved from test_pool.py.)"""

from __future__ import annotations

import os
import signal

import otpy
import pytest
from otpy_pool import Pool, SessionNotFound

from helpers import expect, expect_down, in_thread
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


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
