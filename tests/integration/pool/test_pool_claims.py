"""Claims (issue 24): a session-less command reaches a free worker without
the pool's server, in one round trip; a claim is one process's alone, the
kernel ends it when that process dies, and the server takes a claimed
worker back for its queue once the claim ends (see otpy_pool/_claims.py)."""

from __future__ import annotations

import asyncio
import os
import signal

import otpy
import pytest
from otpy.testing import wait_for

from otpy_pool import PoolError, WorkerCrashed

from helpers import DEADLINE, expect, in_thread, sigkill
from pool_helpers import start

pytestmark = pytest.mark.layer("full")


def test_a_session_less_command_does_not_ask_the_server():
    """With the server SIGSTOPped, session-less commands still run: the
    caller claims a free worker itself (the server was asked once, before,
    where its claims page is)."""
    pool = start(size=2)
    pool.execute("echo", 0)
    server = otpy.whereis(pool.name)
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        ran = in_thread(lambda: [pool.execute("echo", i) for i in range(20)])
        results = ran()
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    assert results == [((i,), {}) for i in range(20)]
    assert pool.status().total_commands == 21


def test_fifo_spreads_claims_over_the_workers_lifo_keeps_the_warm_one():
    fifo = start(size=3, strategy="fifo")
    assert len({fifo.execute("whoami") for _ in range(6)}) == 3
    lifo = start(size=3, strategy="lifo")
    assert len({lifo.execute("whoami") for _ in range(6)}) == 1


def hold_in_pool(pool, parent, tag):
    """A caller in a process of its own: claims the worker for ``hold``."""
    pool.execute("hold", parent, tag)


def test_a_caller_sigkilled_while_it_holds_a_claim_frees_its_worker_for_the_queue():
    pool = start(size=1)
    me = otpy.self()
    holder = otpy.spawn(hold_in_pool, pool, me, "c")
    _, _, worker = expect(lambda m: type(m) is tuple and m[:2] == ("holding", "c"))
    assert pool.status().busy == 1  # claimed: busy, though the server never handed it out
    queued = in_thread(pool.execute, "echo", 1)  # no worker to claim: the server queues it
    wait_for(lambda: pool.status().queued == 1, DEADLINE)
    os.kill(holder.os_pid, signal.SIGKILL)  # its claim ends with it (the kernel's locks)
    otpy.send(worker, ("release", "c"))  # the held command ends; its answer goes nowhere
    assert queued() == ((1,), {})  # the server took the worker back for its queue
    wait_for(lambda: (pool.status().idle, pool.status().busy) == (1, 0), DEADLINE)
    assert pool.execute("echo", 2) == ((2,), {})  # and it is open to claims again


def test_two_tasks_of_one_process_never_share_a_claimed_worker():
    """Claims are the OS process's (POSIX locks): its tasks and threads keep
    apart by a set of their own."""
    pool = start(size=3)
    me = otpy.self()
    threads = [in_thread(pool.execute, "hold", me, t) for t in "abc"]
    holders = {expect(lambda m: type(m) is tuple and m[:2] == ("holding", t))[2]: t
               for t in "abc"}
    assert len(holders) == 3  # three workers, one each
    for worker, tag in holders.items():
        otpy.send(worker, ("release", tag))
    assert sorted(join() for join in threads) == ["a", "b", "c"]


def test_a_caller_that_gives_up_keeps_its_claim_until_the_worker_has_ended_the_command():
    """Cancelled, the caller's command runs on: its worker stays claimed (busy)
    until it ends, so the next command waits for a free worker instead of
    behind it in the worker's mailbox (where its timeout would run)."""
    pool = start(size=1)
    me = otpy.self()

    async def give_up() -> otpy.Pid:
        task = asyncio.ensure_future(pool.aexecute("hold", me, "g"))
        _, _, worker = await otpy.areceive(
            timeout=DEADLINE, match=lambda m: type(m) is tuple and m[:2] == ("holding", "g"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return worker

    worker = asyncio.run(give_up())
    assert pool.status().busy == 1  # still claimed: its command runs
    echo = in_thread(pool.execute, "echo", 1)
    wait_for(lambda: pool.status().queued == 1, DEADLINE)  # waits for a worker, at the server
    otpy.send(worker, ("release", "g"))  # the command ends: the claim with it
    assert echo() == ((1,), {})


def test_a_retiring_workers_slot_goes_to_its_replacement_at_once():
    """A worn worker still checked out leaves service: its replacement is
    claimable while it is held (both free workers run commands with the
    server SIGSTOPped)."""
    pool = start(size=2, max_commands=2)
    me = otpy.self()
    pool.execute("echo", 0)  # (this process asks where the claims page is, once)
    with pool.checkout() as held:
        held.execute("echo", 1)
        held.execute("echo", 2)  # worn: it leaves at its checkin; its replacement starts
        wait_for(lambda: pool.status().idle == 2, DEADLINE)
        server = otpy.whereis(pool.name)
        os.kill(server.os_pid, signal.SIGSTOP)
        try:
            holds = [in_thread(pool.execute, "hold", me, tag) for tag in "xy"]
            workers = {expect(lambda m: type(m) is tuple and m[:2] == ("holding", tag))[2]
                       for tag in "xy"}
            for worker in workers:  # each runs one of them: both tags to each
                otpy.send(worker, ("release", "x"))
                otpy.send(worker, ("release", "y"))
            assert sorted(join() for join in holds) == ["x", "y"]
        finally:
            os.kill(server.os_pid, signal.SIGCONT)
        assert held.pid not in workers and len(workers) == 2


def test_a_claim_held_while_the_pools_server_is_killed_ends_cleanly_and_claims_resume():
    """The server SIGKILLed while a caller's claimed command runs: that caller
    gets its answer or a clear error, never a hang; the replacement server
    opens a claims page of its own, which callers use from then on (with it
    SIGSTOPped, session-less commands still run)."""
    pool = start(size=1)
    me = otpy.self()
    pool.execute("echo", 0)
    held = in_thread(pool.execute, "hold", me, "k")
    _, _, worker = expect(lambda m: type(m) is tuple and m[:2] == ("holding", "k"))
    sigkill(otpy.whereis(pool.name))
    otpy.send(worker, ("release", "k"))
    try:
        assert held() == "k"
    except (WorkerCrashed, PoolError):  # the worker went with its server's subtree
        pass
    wait_for(lambda: len(pool.workers()) == 1 and pool.status().idle == 1, DEADLINE)
    assert pool.execute("echo", 1) == ((1,), {})  # (this process finds the new page)
    server = otpy.whereis(pool.name)
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        results = [pool.execute("echo", i) for i in range(5)]
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    assert results == [((i,), {}) for i in range(5)]
