"""execute_many's pipeline (otpy_pool._pipeline): in order, errors in place,
input checked before anything is sent, a death or a deadline fails only the
running command. (Moved from test_pool.py.)"""

from __future__ import annotations

import otpy
import pytest
from otpy import lowlevel
from otpy_pool import CommandTimeout, PoolEvent, UnknownCommand, WorkerCrashed

from helpers import sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


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
