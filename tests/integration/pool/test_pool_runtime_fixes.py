"""The runtime's fixes as a pool user meets them: a worker lets go of a
command's arguments once it returns, a deep traceback keeps its type, and
what a command started ends with its worker (issue 21, items 3, 4 and 5)."""

from __future__ import annotations

import pytest

import otpy
from otpy_pool import CommandTimeout, Pool

import descendants
import helpers
from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers


def test_a_worker_frees_a_commands_arguments_once_it_returns():
    pool = Pool.start_link(Notes, size=1)
    worker = pool.workers()[0]
    pool.execute("echo", helpers.Tracked(otpy.self(), "argument"))
    # no further command reaches the worker: only letting go can send this
    helpers.expect(lambda m: m == ("freed", "argument", worker))
    otpy.lowlevel.flush(lambda m: type(m) is tuple and m[0] == "freed")


def deep(n):
    if n == 0:
        raise ValueError("deep down")
    deep(n - 1)


def test_a_deep_exception_from_a_worker_keeps_its_type():
    pool = Pool.start_link(Notes, size=1)
    with pool.executor() as ex:
        with pytest.raises(ValueError, match="deep down") as info:
            ex.submit(deep, 400).result(timeout=helpers.DEADLINE)
    assert "were dropped" in info.value.__notes__[-1]


KINDS = ("popen", "new_session", "fork")


def start_descendants():
    return descendants.start(KINDS)


def hang_with_descendants(report_to):
    otpy.send(report_to, ("started", descendants.start(KINDS)))
    otpy.receive()


@pytest.mark.parametrize("ending", ["recycled", "timed_out", "pool_stopped", "sigkill"])
def test_what_a_command_started_ends_with_its_worker(ending):
    pool = Pool.start_link(Notes, size=1, max_commands=1 if ending == "recycled" else None,
                           command_timeout=0.5 if ending == "timed_out" else None)
    mref = otpy.monitor(pool.workers()[0])
    with pool.executor() as ex:
        if ending == "timed_out":
            future = ex.submit(hang_with_descendants, otpy.self())
            os_pids = helpers.expect(lambda m: m[0] == "started")[1]
            with pytest.raises(CommandTimeout):
                future.result(timeout=helpers.DEADLINE)
        else:
            os_pids = ex.submit(start_descendants).result(timeout=helpers.DEADLINE)
            assert helpers.wait_gone(os_pids, timeout=0) == sorted(os_pids)  # all running
    if ending == "pool_stopped":
        pool.stop()
    elif ending == "sigkill":
        helpers.kill_and_wait(pool.workers())
    helpers.expect_down(mref)
    assert helpers.wait_gone(os_pids) == [], "a worker's descendants outlived it"
