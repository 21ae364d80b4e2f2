"""Commands queued behind a crash are not lost (issue 22, item 2): when a
worker dies, only the command it was running fails (WorkerCrashed); those
queued in its mailbox, or sent to it after it died, run on a new worker
(a session's after its replay), each exactly once. Real SIGKILLs, and a
non-idempotent command (``ran`` reports every run to the test)."""

from __future__ import annotations

import os
import signal

import otpy
import pytest
from otpy import lowlevel
from otpy.testing import wait_for
from otpy_pool import Pool, WorkerCrashed

from helpers import expect, in_thread
from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers


def queued(worker: otpy.Pid, n: int) -> None:
    """Wait until ``n`` messages wait in the worker's mailbox (it is busy in
    ``hold``, whose receive reads them in and leaves them queued)."""
    wait_for(lambda: otpy.process_info(worker)["message_queue_len"] >= n)


def runs() -> list:
    """Every ("ran", tag) report received so far (each run of ``ran`` sends one)."""
    found = []
    lowlevel.flush(lambda m: type(m) is tuple and m[:1] == ("ran",) and not found.append(m[1]))
    return sorted(found)


def test_commands_queued_behind_the_running_one_run_on_the_new_worker_once_each():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=2)
    pool.execute("add", "kept", session="s")
    victim = pool.worker_of("s")
    running = in_thread(pool.execute, "hold", me, "h", session="s")
    expect(lambda m: m[:2] == ("holding", "h"))
    waiting = [in_thread(pool.execute, "ran", me, n, session="s") for n in range(5)]
    queued(victim, 5)
    os.kill(victim.os_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        running()
    assert info.value.reason == "killed"
    assert sorted(join() for join in waiting) == [0, 1, 2, 3, 4]
    assert runs() == [0, 1, 2, 3, 4]  # each exactly once
    assert pool.execute("notes", session="s") == ["kept"]  # after the replay
    status = pool.status()
    # the replay is not a command; hold died with its worker (an error)
    assert (status.total_commands, status.errors, status.worker_restarts) == (8, 1, 1)
    pool.stop()


def test_a_command_sent_to_a_worker_already_dead_runs_on_the_new_one():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=1)
    for n in range(10):
        pool.execute("add", n, session="s")
        os.kill(pool.worker_of("s").os_pid, signal.SIGKILL)  # not waiting for its Down
        assert pool.execute("ran", me, n, session="s") == n
    assert runs() == list(range(10))
    assert pool.execute("notes", session="s") == list(range(10))
    for n in range(10, 13):  # session-less: through a checkout
        os.kill(pool.workers()[0].os_pid, signal.SIGKILL)
        assert pool.execute("ran", me, n) == n
    assert runs() == [10, 11, 12]
    assert pool.status().errors == 0
    pool.stop()


def test_execute_many_queued_behind_another_callers_command_is_not_lost():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=2)
    pool.execute("ping", session="s")
    victim = pool.worker_of("s")
    running = in_thread(pool.execute, "hold", me, "h", session="s")
    expect(lambda m: m[:2] == ("holding", "h"))
    batch = in_thread(pool.execute_many, "ran", [(me, n) for n in range(5)], session="s")
    queued(victim, 5)
    os.kill(victim.os_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        running()
    assert batch() == [0, 1, 2, 3, 4]
    assert runs() == [0, 1, 2, 3, 4]
    pool.stop()


def test_a_checkouts_queued_command_runs_on_a_new_worker():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=2)
    with pool.checkout() as held:
        victim = held.pid
        running = in_thread(held.execute, "hold", me, "h")
        expect(lambda m: m[:2] == ("holding", "h"))
        waiting = in_thread(held.execute, "ran", me, "q")
        queued(victim, 1)
        os.kill(victim.os_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            running()
        assert waiting() == "q"
        assert held.pid != victim and held.pid in pool.workers()
        assert held.execute("ran", me, "after") == "after"
    assert runs() == ["after", "q"]
    assert pool.status().busy == 0  # the new worker was returned at the end
    pool.stop()
