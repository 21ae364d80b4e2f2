"""The pool awaited from asyncio (issue 26, callers): aexecute, aexecute_many,
asession, acheckout. Same semantics, errors and counts as the sync forms; the
task waits, never a thread; a cancelled caller gives up its place."""

from __future__ import annotations

import asyncio
import threading

import pytest

import otpy
from otpy._runtime.node import context  # internals: no waiter is left behind
from otpy_pool import CommandTimeout, PoolTimeout, WorkerCrashed

from otpy.testing import wait_for

from helpers import DEADLINE
from pool_helpers import start


def run(coroutine, timeout=DEADLINE):
    """Run a coroutine on a fresh loop, bounded."""
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout)
    return asyncio.run(bounded())


def no_waiter_left():
    ctx = context()
    assert not ctx.tasks and not ctx.keyed_tasks and not ctx.awaiting


async def holding(tag):
    """Wait until a worker runs the ``hold`` command tagged ``tag``; its pid."""
    message = await otpy.areceive(timeout=DEADLINE,
                                  match=lambda m: m[:2] == ("holding", tag))
    return message[2]


def test_aexecute_answers_as_execute_does():
    pool = start()
    assert run(pool.aexecute("echo", 1, two=2)) == pool.execute("echo", 1, two=2)
    assert run(pool.aexecute("add", "x", session="s")) == 1
    assert pool.execute("add", "y", session="s") == 2
    assert run(pool.aexecute("notes", session="s")) == ["x", "y"]
    with pytest.raises(KeyError, match="boom"):
        run(pool.aexecute("fail", "boom"))
    with pytest.raises(CommandTimeout):
        run(pool.aexecute("nap", 5, timeout=0.2))
    with pytest.raises(WorkerCrashed):
        run(pool.aexecute("die"))
    status = pool.status()
    assert status.errors == 3 and status.timeouts == 1
    assert pool.execute("ping") == run(pool.aexecute("ping"))  # the pool is whole again
    no_waiter_left()


def test_a_bound_session_runs_gathered_commands_in_the_order_issued():
    """Once the session is bound, each task's command goes out at its first
    await: tasks created in order run in order, pipelined on one worker."""
    pool = start()

    async def many():
        async with pool.asession("s") as s:
            await s.aexecute("add", "first")
            await asyncio.gather(*(s.aexecute("add", i) for i in range(200)))
            return await s.aexecute("notes")

    assert run(many()) == ["first", *range(200)]
    assert pool.status().sessions == 0  # asession ended it


def test_aexecute_many_returns_in_order():
    pool = start()
    calls = [(i,) for i in range(100)]
    assert run(pool.aexecute_many("echo", calls)) == [((i,), {}) for i in range(100)] \
        == pool.execute_many("echo", calls)
    outcomes = run(pool.aexecute_many("fail", [("a",), ("b",)], return_exceptions=True))
    assert [type(o) for o in outcomes] == [KeyError, KeyError]


def test_ten_thousand_concurrent_aexecutes_use_no_thread():
    pool = start()
    before = threading.active_count()
    seen = []

    async def one(i):
        value = await pool.aexecute("echo", i)
        seen.append(threading.active_count())
        return value

    async def many():
        return await asyncio.gather(*(one(i) for i in range(10_000)))

    assert run(many(), timeout=120) == [((i,), {}) for i in range(10_000)]
    assert max(seen) == before
    no_waiter_left()


def test_a_cancelled_caller_gives_up_its_place_in_the_queue():
    pool = start(size=1, max_overflow=0)
    me = otpy.self()

    async def scenario():
        holder = asyncio.ensure_future(pool.aexecute("hold", me, "h"))
        worker = await holding("h")
        waiter = asyncio.ensure_future(pool.aexecute("ping", checkout_timeout=DEADLINE))
        while pool.status().queued != 1:  # the waiter is in the pool's queue
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        while pool.status().queued != 0:  # its place given up at once, not at its timeout
            await asyncio.sleep(0)
        otpy.send(worker, ("release", "h"))
        assert await holder == "h"
        return await pool.aexecute("whoami")

    assert run(scenario()) is not None
    status = pool.status()
    assert status.idle == 1 and status.busy == 0 and status.timeouts == 0
    no_waiter_left()


def test_a_cancelled_running_command_finishes_and_its_result_is_dropped():
    pool = start(size=1, max_overflow=0)
    me = otpy.self()

    async def scenario():
        task = asyncio.ensure_future(pool.aexecute("hold", me, "h"))
        worker = await holding("h")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        otpy.send(worker, ("release", "h"))
        # the next caller gets its own answer, never the dropped "h"
        return worker, await pool.aexecute("echo", "next")

    worker, value = run(scenario())
    assert value == (("next",), {})
    assert pool.workers() == [worker]  # it finished on its worker, which lives on
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: type(m) is tuple and m[:1] == ("$reply",))
    no_waiter_left()


def test_asyncio_timeout_cancels_a_session_command_and_keeps_the_session():
    pool = start(size=1)
    me = otpy.self()

    async def scenario():
        async with pool.asession("s") as s:
            await s.aexecute("add", 1)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.aexecute("hold", me, "h"), 0.2)
            worker = await holding("h")
            otpy.send(worker, ("release", "h"))
            await s.aexecute("add", 2)
            return await s.aexecute("notes")

    assert run(scenario()) == [1, 2]
    no_waiter_left()


def test_acheckout_holds_a_worker_and_replaces_it_after_an_error():
    pool = start(size=1, max_overflow=0)

    async def scenario():
        async with pool.acheckout() as held:
            first = await held.aexecute("whoami")
            with pytest.raises(PoolTimeout):  # the only worker is held
                await pool.aexecute("ping", checkout_timeout=0.1)
        with pytest.raises(RuntimeError):
            async with pool.acheckout() as held:
                await held.aexecute("whoami")
                raise RuntimeError("the body failed")
        return first

    first = run(scenario())
    wait_for(lambda: pool.workers() and pool.workers()[0] != first)  # replaced
    assert pool.status().busy == 0


def test_sync_and_async_callers_mix_on_one_pool():
    pool = start()
    results = {}

    def sync_caller():
        results["sync"] = [pool.execute("add", i, session="sync") for i in range(100)]

    async def async_callers():
        return await asyncio.gather(*(pool.aexecute("echo", i) for i in range(300)))

    thread = threading.Thread(target=sync_caller)
    thread.start()
    results["async"] = run(async_callers(), timeout=60)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert pool.execute("notes", session="sync") == list(range(100))
    assert results["async"] == [((i,), {}) for i in range(300)]


def test_a_loop_in_another_thread_can_aexecute():
    pool = start()
    out = {}

    def in_thread():
        out["value"] = asyncio.run(pool.aexecute("echo", "from a thread"))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(DEADLINE)
    assert out == {"value": (("from a thread",), {})}


def test_aexecute_works_on_uvloop():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is in the test extra")
    pool = start()

    async def calls():
        return await asyncio.gather(*(pool.aexecute("echo", i) for i in range(300)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(calls()) == [((i,), {}) for i in range(300)]
