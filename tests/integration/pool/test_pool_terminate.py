"""A worker's ``terminate(reason)`` runs on every planned stop: ``pool.stop()``,
a supervisor stopping the pool, a retirement; after the running command,
within the class's ``shutdown_timeout`` (then the worker is killed). Issue 22,
item 3."""

from __future__ import annotations

import otpy
import pytest
from otpy_pool import Pool
from otpy.testing import wait_for

from helpers import DEADLINE, expect, in_thread, wait_gone
from pool_workers import Notes, StuckTerminate, event

pytestmark = pytest.mark.layer("full")  # real pool workers


def terminated(timeout: float = DEADLINE) -> tuple:
    return expect(lambda m: type(m) is tuple and m[:1] == ("terminated",), timeout)


def test_pool_stop_runs_terminate_in_every_worker_with_the_stop_reason():
    pool = Pool.start_link(Notes, size=2, kwargs={"report_to": otpy.self()})
    workers = pool.workers()
    pool.stop()
    seen = sorted([terminated(), terminated()])
    assert seen == sorted(("terminated", w, "shutdown") for w in workers)


def test_a_supervisor_that_stops_the_pool_runs_terminate():
    me = otpy.self()
    app = otpy.Supervisor.start_link([Pool.child_spec(Notes, size=1, name="api",
                                                      kwargs={"report_to": me})])
    worker = Pool("api").workers()[0]
    otpy.Supervisor.stop(app)
    assert terminated() == ("terminated", worker, "shutdown")
    app = otpy.Supervisor.start_link([Pool.child_spec(Notes, size=1, name="api",
                                                      kwargs={"report_to": me})])
    worker = Pool("api").workers()[0]
    otpy.Supervisor.terminate_child(app, "api")
    assert terminated() == ("terminated", worker, "shutdown")
    otpy.Supervisor.stop(app)


def test_stop_while_a_command_runs_lets_it_finish_then_terminates():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=1, kwargs={"report_to": me})
    worker = pool.workers()[0]
    running = in_thread(pool.execute, "hold", me, "h", session="s")
    expect(lambda m: m[:2] == ("holding", "h"))
    stopping = in_thread(pool.stop)
    # the stop's exit signal waits in the worker's mailbox behind the command
    wait_for(lambda: otpy.process_info(worker)["message_queue_len"] > 0)
    otpy.send(worker, ("release", "h"))
    assert running() == "h"  # the command finished and its caller got the result
    assert terminated() == ("terminated", worker, "shutdown")
    stopping()


def test_terminate_and_the_running_command_are_bounded_by_the_shutdown_timeout():
    pool = Pool.start_link(StuckTerminate, size=1, kwargs={"report_to": otpy.self()})
    worker = pool.workers()[0]
    pool.stop()  # returns: the worker is killed 0.3 s after the stop's signal
    assert terminated()[1] == worker  # it ran, and hung
    assert wait_gone([worker.os_pid]) == []


def test_a_retired_worker_runs_terminate_with_the_retired_reason():
    pool = Pool.start_link(Notes, size=1, max_commands=1, kwargs={"report_to": otpy.self()})
    pool.subscribe()
    first = pool.workers()[0]
    pool.execute("ping")
    assert event("recycled").worker == first
    assert terminated() == ("terminated", first, ("shutdown", "otpy_pool.retired"))
    replacement = event("worker_started").worker
    pool.stop()
    assert terminated() == ("terminated", replacement, "shutdown")


def test_a_bad_shutdown_timeout_is_named():
    bad = type("Hasty", (Notes,), {"shutdown_timeout": -1})
    with pytest.raises(ValueError, match="Hasty.shutdown_timeout"):
        Pool.start_link(bad, size=1)
