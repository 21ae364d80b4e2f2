"""A session-less execute in one round trip (issue 24): the server hands the
command to a free worker in the caller's own call, the worker answers the
caller directly, the server keeps the deadline and sees the worker's death."""

from __future__ import annotations

import asyncio
import os
import signal

import otpy
import pytest
from otpy.testing import wait_for
from otpy_pool import CommandTimeout

from helpers import DEADLINE, expect, in_thread, sigkill
from pool_helpers import start


def test_the_worker_answers_the_caller_while_the_server_is_stopped():
    """The answer does not pass through the server: with the server
    SIGSTOPped after it handed the command over, the caller still gets it."""
    pool = start(size=1)
    me = otpy.self()
    server = otpy.whereis(pool.name)
    waiting = in_thread(pool.execute, "hold", me, "h")
    _, _, worker = expect(lambda m: m[:2] == ("holding", "h"))
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        otpy.send(worker, ("release", "h"))
        assert waiting() == "h"
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    wait_for(lambda: pool.status().busy == 0)  # the worker checked itself back in
    assert pool.execute("echo", 1) == ((1,), {})


def test_a_command_handed_to_a_worker_that_dies_before_starting_it_runs_on_another(tmp_path):
    pool = start(size=1)
    path = str(tmp_path / "ran")
    (worker,) = pool.workers()
    os.kill(worker.os_pid, signal.SIGSTOP)  # idle to the pool: it gets the next command
    waiting = in_thread(pool.execute, "record", path, "once")
    wait_for(lambda: pool.status().busy == 1)  # handed over, not started
    sigkill(worker)
    assert waiting() == "once"  # run on the replacement
    with open(path) as f:
        assert f.read() == "once\n"  # exactly once
    assert pool.workers() != [worker] and pool.status().errors == 0


def test_handed_commands_past_their_timeouts_are_cut_by_one_timer_each_in_turn():
    pool = start(size=2)

    async def both():
        return await asyncio.gather(pool.aexecute("nap", 30, timeout=0.2),
                                    pool.aexecute("nap", 30, timeout=0.4),
                                    return_exceptions=True)

    outcomes = asyncio.run(asyncio.wait_for(both(), DEADLINE))
    assert [type(o) for o in outcomes] == [CommandTimeout, CommandTimeout]
    assert "200 ms" in str(outcomes[0]) and "400 ms" in str(outcomes[1])
    status = pool.status()
    assert status.timeouts == 2 and status.worker_restarts == 2
    wait_for(lambda: len(pool.workers()) == 2)
    assert pool.execute("echo", 2) == ((2,), {})


def test_a_stateless_command_whose_worker_is_killed_while_running_it_fails_once(tmp_path):
    from otpy_pool import WorkerCrashed

    pool = start(size=1)
    me = otpy.self()
    waiting = in_thread(pool.execute, "hold", me, "k")
    _, _, worker = expect(lambda m: m[:2] == ("holding", "k"))
    sigkill(worker)
    with pytest.raises(WorkerCrashed):
        waiting()
    assert pool.execute("echo", 3) == ((3,), {})
    with pytest.raises(otpy.Timeout):  # no second answer left behind
        otpy.receive(timeout=0, match=lambda m: type(m) is tuple and m[:1] == ("$reply",))


def test_a_callers_next_command_finds_the_worker_that_served_it_checked_in():
    """The worker checks in before it answers, so a caller's commands one
    after another take the same (last returned, LIFO) worker of an idle pool."""
    pool = start(size=3, strategy="lifo")
    served = {pool.execute("whoami") for _ in range(50)}
    assert len(served) == 1
    assert pool.status().busy == 0


def test_a_worker_that_dies_between_its_check_in_and_its_answer_fails_that_command():
    """The worker checks in, the server hands it the next command at once,
    and the worker dies before it sends its first answer: the first caller
    gets WorkerCrashed (it never hangs), the second's command, never
    started, runs on the replacement."""
    from otpy_pool import WorkerCrashed

    pool = start(size=1)
    me = otpy.self()
    first = in_thread(pool.execute, "hold_then_die_answering", me, "a")
    _, _, worker = expect(lambda m: m[:2] == ("holding", "a"))
    second = in_thread(pool.execute, "echo", "b")
    wait_for(lambda: pool.status().queued == 1)  # waits for the one worker
    otpy.send(worker, ("release", "a"))
    with pytest.raises(WorkerCrashed):
        first()
    assert second() == (("b",), {})
