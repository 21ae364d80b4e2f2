"""Workers that run ``async def`` commands concurrently (issue 26, workers):
up to ``max_concurrency`` at once on one worker, a session's one at a time
in order, replay first; a deadline cancels (then kills); a SIGKILL fails
only the commands running. Concurrency is proven by messages, never by
timing: the commands report to the test, and wait for its word."""

from __future__ import annotations

import asyncio
import os
import signal

import otpy
import pytest
from otpy import lowlevel
from otpy.testing import wait_for
from otpy_pool import CommandTimeout, Pool, SessionLost, Worker, WorkerCrashed, command

from helpers import DEADLINE, expect, expect_down
from pool_workers import AsyncNotes, Notes, StubbornGrace

pytestmark = pytest.mark.layer("full")  # real pool workers


def run(coroutine):
    """Run a coroutine on a fresh loop, bounded; the gates' "ended" reports
    not read are dropped."""
    async def bounded():
        return await asyncio.wait_for(coroutine, DEADLINE)
    try:
        return asyncio.run(bounded())
    finally:
        lowlevel.flush(lambda m: type(m) is tuple and m[:1] == ("ended",))


async def reports(kinds: tuple, n: int) -> list:
    """The next ``n`` reports of these kinds ("started", "ended", ...), in the
    order the worker sent them."""
    return [await otpy.areceive(timeout=DEADLINE, match=lambda m: type(m) is tuple
                                and m[:1] in [(k,) for k in kinds]) for _ in range(n)]


def go(worker: otpy.Pid, *tags) -> None:
    for tag in tags:
        otpy.send(worker, ("go", tag))


def runs() -> list:
    """Every ("ran", tag) report received so far."""
    found = []
    lowlevel.flush(lambda m: type(m) is tuple and m[:1] == ("ran",) and not found.append(m[1]))
    return sorted(found)


# ---- concurrency -------------------------------------------------------------------------------

def test_commands_run_at_once_on_one_worker_and_status_counts_them():
    """Four commands each wait for a word the test sends only once all four
    have started: one at a time, the first would wait forever."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1)
    (worker,) = pool.workers()

    async def scenario():
        tasks = [asyncio.create_task(pool.aexecute("gate", me, n)) for n in range(4)]
        started = await reports(("started",), 4)
        assert {m[2] for m in started} == {worker}
        status = pool.status()
        assert status.in_flight == {worker: 4} and status.busy == 4 and status.idle == 0
        go(worker, *range(4))
        return await asyncio.gather(*tasks)

    assert run(scenario()) == [0, 1, 2, 3]
    status = pool.status()
    assert status.in_flight == {worker: 0} and status.total_commands == 4
    pool.stop()


def test_no_more_than_max_concurrency_commands_start():
    """With 2 slots, sessions bound to one worker: the third command starts
    only after one has ended (the worker's reports, in the order it sent
    them, say so); the pool's option overrides the class's 4."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1, max_concurrency=2)
    (worker,) = pool.workers()

    async def scenario():
        tasks = [asyncio.create_task(pool.aexecute("gate", me, n, session=f"s{n}"))
                 for n in range(3)]
        first = await reports(("started",), 2)
        assert pool.status().in_flight == {worker: 2}
        go(worker, first[0][1])
        ended, then = await reports(("started", "ended"), 2)  # in the order it sent them
        assert ended == ("ended", first[0][1]) and then[0] == "started"
        go(worker, first[1][1], then[1])
        return await asyncio.gather(*tasks)

    assert run(scenario()) == [0, 1, 2]
    pool.stop()


def test_session_less_commands_take_one_slot_each_then_queue_in_the_pool():
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1, max_concurrency=2)
    (worker,) = pool.workers()

    async def scenario():
        tasks = [asyncio.create_task(pool.aexecute("gate", me, n)) for n in range(3)]
        first = await reports(("started",), 2)
        wait_for(lambda: pool.status().queued == 1)  # the third waits for a slot
        go(worker, first[0][1])
        (then,) = await reports(("started",), 1)
        go(worker, first[1][1], then[1])
        return await asyncio.gather(*tasks)

    assert run(scenario()) == [0, 1, 2]
    assert pool.status().busy == 0
    pool.stop()


def test_a_sessions_commands_run_one_at_a_time_in_order_beside_other_sessions():
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1)
    (worker,) = pool.workers()
    pool.execute("add", "bound", session="s")

    async def scenario():
        mine = [asyncio.create_task(pool.aexecute("gate", me, ("s", n), session="s"))
                for n in range(3)]
        other = asyncio.create_task(pool.aexecute("gate", me, "other", session="t"))
        assert {m[1] for m in await reports(("started",), 2)} == {("s", 0), "other"}
        go(worker, "other")
        assert await reports(("ended",), 1) == [("ended", "other")]
        go(worker, ("s", 0))
        for n in (1, 2):  # each starts only once the one before it ended
            ended, started = await reports(("started", "ended"), 2)
            assert ended[:2] == ("ended", ("s", n - 1)) and started[:2] == ("started", ("s", n))
            go(worker, ("s", n))
        return await asyncio.gather(*mine, other)

    assert run(scenario()) == [("s", 0), ("s", 1), ("s", 2), "other"]
    assert pool.execute("sync_ping", session="s") == ("pong", "s")  # a sync command too
    pool.stop()


def test_a_command_waiting_behind_its_session_past_its_deadline_never_runs():
    """Answered CommandTimeout by the worker, which serves on."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1)
    (worker,) = pool.workers()
    running = None

    async def scenario():
        nonlocal running
        running = asyncio.create_task(pool.aexecute("gate", me, "first", session="s"))
        await reports(("started",), 1)
        with pytest.raises(CommandTimeout, match="did not start"):
            await pool.aexecute("ran", me, "late", session="s", timeout=0.2)
        go(worker, "first")
        return await running

    assert run(scenario()) == "first"
    assert runs() == [] and pool.workers() == [worker]
    assert pool.status().timeouts == 1 and pool.status().worker_restarts == 0
    pool.stop()


def test_a_new_session_goes_to_the_worker_with_fewer_commands_in_flight():
    """Two workers with one session each: the third goes where fewer run."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=2)
    pool.execute("add", 1, session="s1")
    pool.execute("add", 2, session="s2")
    busy, quiet = pool.worker_of("s1"), pool.worker_of("s2")
    assert busy != quiet and pool.workers()[0] == busy  # the tie would go to busy

    async def scenario():
        task = asyncio.create_task(pool.aexecute("gate", me, "g", session="s1"))
        await reports(("started",), 1)
        assert await pool.aexecute("whoami", session="s3") == quiet
        go(busy, "g")
        await task

    run(scenario())
    pool.stop()


# ---- replay and the worker's own callbacks ------------------------------------------------------

def test_replay_runs_before_the_sessions_next_command():
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, kwargs={"report_to": me}, size=1)
    expect(lambda m: m[:1] == ("init",))
    assert [pool.execute("add", note, session="s") for note in "ab"] == [1, 2]
    first = pool.worker_of("s")
    expect_down_of(first, lambda: os.kill(first.os_pid, signal.SIGKILL))
    assert pool.execute("notes", session="s") == ["a", "b"]
    assert pool.worker_of("s") != first
    lowlevel.flush(lambda m: type(m) is tuple and m[:1] in (("added",), ("init",)))
    assert pool.status().sessions_recovered == 1
    pool.stop()


def test_a_failed_replay_is_session_lost_and_the_session_starts_empty(otpy_tree):
    path = os.path.join(otpy_tree.tmp_path, "program.txt")
    with open(path, "w") as f:
        f.write("v1")
    pool = Pool.start_link(AsyncNotes, size=1)
    assert pool.execute("load", path, session="s") == "v1"
    os.remove(path)
    worker = pool.worker_of("s")
    expect_down_of(worker, lambda: os.kill(worker.os_pid, signal.SIGKILL))
    with pytest.raises(SessionLost, match="FileNotFoundError|No such file"):
        pool.execute("notes", session="s")
    assert pool.execute("notes", session="s") == []  # empty next time
    assert pool.status().sessions_lost == 1
    pool.stop()


def expect_down_of(pid: otpy.Pid, act) -> None:
    ref = otpy.monitor(pid)
    act()
    expect_down(ref)


def test_async_init_health_check_and_terminate_are_called():
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, kwargs={"report_to": me}, size=1, health_interval=0.05)
    (worker,) = pool.workers()
    assert expect(lambda m: m[:1] == ("init",))[1] == worker
    assert expect(lambda m: m[:1] == ("health_checked",))[1] == worker
    pool.stop()
    assert expect(lambda m: m[:1] == ("terminated",))[1] == "shutdown"
    lowlevel.flush(lambda m: type(m) is tuple and m[:1] == ("health_checked",))


# ---- deadlines ------------------------------------------------------------------------------------

def test_a_command_past_its_deadline_is_cancelled_and_its_worker_serves_on():
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1, command_timeout=0.3)
    pool.execute("add", "kept", session="s")
    worker = pool.worker_of("s")
    with pytest.raises(CommandTimeout):
        pool.execute("patient", me, "p", session="s")
    expect(lambda m: m == ("cancelled", "p"))  # it saw CancelledError
    assert pool.execute("notes", session="s") == ["kept"]  # same worker, same state
    status = pool.status()
    assert pool.workers() == [worker] and pool.worker_of("s") == worker
    assert (status.timeouts, status.worker_restarts, status.errors) == (1, 0, 1)
    lowlevel.flush(lambda m: type(m) is tuple and m[:2] == ("started", "p"))
    pool.stop()


def test_a_command_that_ignores_its_cancellation_has_its_worker_killed():
    me = otpy.self()
    pool = Pool.start_link(StubbornGrace, size=1)
    (worker,) = pool.workers()
    ref = otpy.monitor(worker)
    with pytest.raises(CommandTimeout, match="replaced"):
        pool.execute("stubborn", me, "s", timeout=0.2)
    expect(lambda m: m == ("ignored", "s"))  # it was cancelled first
    expect_down(ref)
    assert pool.execute("whoami") != worker
    status = pool.status()
    assert (status.timeouts, status.worker_restarts) == (1, 1)
    lowlevel.flush(lambda m: type(m) is tuple and m[:2] in (("started", "s"), ("ignored", "s")))
    pool.stop()


# ---- crashes ---------------------------------------------------------------------------------------

def test_a_sigkill_fails_the_commands_running_and_the_queued_ones_run_on_the_new_worker():
    """Three sessions run a gate each (all three slots); queued on the same
    worker: a command behind s1's gate (its session's order) and one of s4
    (no slot free). After the SIGKILL the three gates fail with
    WorkerCrashed; the two queued ones run once each, on the new worker."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, size=1, max_concurrency=3)
    for sid in ("s1", "s2", "s3", "s4"):
        pool.execute("add", sid, session=sid)
    (worker,) = pool.workers()

    async def scenario():
        gates = [asyncio.create_task(pool.aexecute("gate", me, n, session=f"s{n}"))
                 for n in (1, 2, 3)]
        await reports(("started",), 3)
        queued = [asyncio.create_task(pool.aexecute("ran", me, sid, session=sid))
                  for sid in ("s1", "s4")]
        # sent after the queued ones, from this process: answered once they are in
        await asyncio.create_task(otpy.acall(worker, ("after the queued ones",)))
        assert pool.status().in_flight == {worker: 3}
        os.kill(worker.os_pid, signal.SIGKILL)
        gated = await asyncio.gather(*gates, return_exceptions=True)
        return gated, await asyncio.gather(*queued)

    gated, queued = run(scenario())
    assert all(isinstance(e, WorkerCrashed) and e.reason == "killed" for e in gated), gated
    assert queued == ["s1", "s4"] and runs() == ["s1", "s4"]  # each once
    assert pool.workers() != [worker]
    assert pool.execute("notes", session="s1") == ["s1"]  # replayed first
    status = pool.status()
    assert (status.worker_restarts, status.errors) == (1, 3)
    pool.stop()


def test_a_retired_worker_moves_its_queued_commands_and_finishes_the_running_ones():
    """Worn out (max_commands) while a gate runs and a command of its
    session waits behind it: the waiting one is answered "moved" and runs
    on the new worker; the gate ends on the old one, which then stops
    (its terminate sees the retirement)."""
    me = otpy.self()
    pool = Pool.start_link(AsyncNotes, kwargs={"report_to": me}, size=1, max_commands=1)
    (old,) = pool.workers()

    async def scenario():
        a = asyncio.create_task(pool.aexecute("gate", me, "A", session="s1"))
        b = asyncio.create_task(pool.aexecute("gate", me, "B", session="s2"))
        await reports(("started",), 2)
        c = asyncio.create_task(pool.aexecute("ran", me, "s1", session="s1"))  # behind A
        await asyncio.create_task(otpy.acall(old, ("after the queued one",)))
        go(old, "B")  # its end wears the worker out
        assert await c == "s1" and await b == "B"
        go(old, "A")
        return await a

    assert run(scenario()) == "A"
    assert runs() == ["s1"] and pool.worker_of("s1") != old
    assert expect(lambda m: m[:1] == ("terminated",))[1] == ("shutdown", "otpy_pool.retired")
    lowlevel.flush(lambda m: type(m) is tuple and m[:1] == ("init",))
    pool.stop()


def test_a_batch_on_an_async_worker_runs_concurrently_and_answers_in_order():
    pool = Pool.start_link(AsyncNotes, size=1)
    assert pool.execute_many("add", [(n,) for n in range(10)], session="b") == list(range(1, 11))
    assert pool.execute_many("whoami", [()] * 8) == pool.workers() * 8
    pool.stop()


# ---- the rules, and sync workers unchanged ---------------------------------------------------------

class SyncOnly(Worker):
    @command
    def ping(self, session):
        return "pong"


def test_max_concurrency_is_checked_before_anything_starts():
    assert AsyncNotes.is_async() and not Notes.is_async()
    with pytest.raises(ValueError, match="no async def command"):
        Pool.start_link(SyncOnly, size=1, max_concurrency=2)
    with pytest.raises(ValueError, match="max_concurrency"):
        Pool.start_link(AsyncNotes, size=1, max_concurrency=0)
    with pytest.raises(TypeError, match="max_concurrency"):
        Pool.start_link(AsyncNotes, size=1, max_concurrency="2")
    with pytest.raises(ValueError, match="cancel_grace"):
        Pool.start_link(type("NoGrace", (AsyncNotes,), {"cancel_grace": -1.0}), size=1)


def test_a_sync_worker_runs_one_command_at_a_time_and_counts_it_in_flight():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=1)
    (worker,) = pool.workers()
    assert pool.status().in_flight == {worker: 0}

    async def scenario():
        task = asyncio.create_task(pool.aexecute("hold", me, "h", session="s"))
        await otpy.areceive(timeout=DEADLINE, match=lambda m: m[:2] == ("holding", "h"))
        assert pool.status().in_flight == {worker: 1}
        otpy.send(worker, ("release", "h"))
        return await task

    assert run(scenario()) == "h"
    with pytest.raises(CommandTimeout, match="replaced"):  # killed at its deadline, as ever
        pool.execute("hold", me, "x", session="s", timeout=0.2)
    assert pool.status().worker_restarts == 1
    lowlevel.flush(lambda m: type(m) is tuple and m[:2] == ("holding", "x"))
    pool.stop()
