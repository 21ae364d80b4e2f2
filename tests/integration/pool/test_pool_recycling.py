"""Health checks, recycling (max_commands, max_memory), retirement while held,
overflow workers, lazy pools, the idle strategy. (Moved from test_pool.py.)"""

from __future__ import annotations

import os

import otpy
import pytest
from otpy import lowlevel
from otpy_pool import Pool, PoolEvent, PoolTimeout

from helpers import expect, in_thread, sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import Notes, event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def test_an_unhealthy_worker_is_replaced_and_its_sessions_move_by_replay(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1, health_timeout=2.0)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    sick = pool.workers()[0]
    pool.execute("set_unhealthy_if", flag, session="s")
    open(flag, "w").close()
    assert event("health_failed").worker == sick
    os.remove(flag)
    event("worker_started")
    assert event("worker_exited").worker == sick  # retired once idle
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.worker_of("s") != sick
    status = pool.status()
    assert status.worker_restarts == 0 and status.sessions_recovered == 1
    pool.stop()


def test_a_hung_health_check_replaces_the_worker(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "hang")
    pool = start(size=1, health_interval=0.05, health_timeout=0.2)
    pool.subscribe()
    hung = pool.workers()[0]
    pool.execute("set_hung_health_if", flag, session="s")
    open(flag, "w").close()
    assert event("health_failed").detail == "no answer"
    assert event("worker_exited").detail == "('shutdown', 'health_check_timeout')"
    event("worker_started")
    assert hung not in pool.workers()
    os.remove(flag)
    pool.stop()


def test_health_checks_never_kill_a_busy_worker():
    """A command longer than health_timeout runs to its end: busy workers are
    not checked (a hung command is command_timeout's business)."""
    me = otpy.self()
    pool = start(size=2, health_interval=0.05, health_timeout=0.1,
                 kwargs={"report_to": me})
    pool.subscribe()
    pool.execute("ping", session="long")
    busy = pool.worker_of("long")
    idle = next(w for w in pool.workers() if w != busy)
    running = in_thread(pool.execute, "hold", me, "h", session="long")
    expect(lambda m: m[:2] == ("holding", "h"))
    lowlevel.flush(lambda m: m == ("health_checked", idle))
    for _ in range(5):  # five ticks: far past health_timeout
        expect(lambda m: m == ("health_checked", idle))
    otpy.send(busy, ("release", "h"))
    assert running() == "h"
    assert set(pool.workers()) == {busy, idle}
    assert lowlevel.flush(lambda m: isinstance(m, PoolEvent) and m.kind == "health_failed") == 0
    pool.stop()


def test_max_commands_recycles_a_worker_without_counting_a_restart():
    pool = start(size=1, max_commands=3)
    pool.subscribe()
    first = pool.workers()[0]
    pool.execute("add", "a", session="s")
    pool.execute("add", "b", session="s")
    pool.execute("ping")
    assert event("recycled").worker == first
    assert event("worker_exited").worker == first
    assert pool.execute("notes", session="s") == ["a", "b"]  # moved by replay
    assert pool.worker_of("s") != first
    status = pool.status()
    assert status.worker_restarts == 0 and status.total_commands == 4
    pool.stop()


def test_max_memory_recycles_a_worker_past_it():
    pool = start(size=1, max_memory=10**12)
    worker = pool.workers()[0]
    pool.execute("grow", 10)
    assert pool.workers() == [worker]
    pool2 = Pool.start_link(Notes, size=1, max_memory=1, name="tiny")
    pool2.subscribe()
    first = pool2.workers()[0]
    pool2.execute("ping")
    assert event("recycled").worker == first
    pool2.stop()
    pool.stop()


def test_overflow_workers_start_under_load_and_stop_when_idle():
    pool = start(size=1, max_overflow=1, overflow_idle=0.2)
    pool.subscribe()
    with pool.checkout():
        with pool.checkout() as extra:
            assert pool.status().overflow == 1 and len(pool.workers()) == 2
        event("worker_started")
    gone = event("worker_exited")
    assert gone.worker == extra.pid
    status = pool.status()
    assert status.overflow == 0 and status.worker_restarts == 0 and len(pool.workers()) == 1
    pool.stop()


def test_lazy_pools_start_workers_on_demand_up_to_size_plus_overflow():
    pool = start(size=2, lazy=True, max_overflow=1, checkout_timeout=0.2)
    assert pool.workers() == []
    pool.execute("ping")
    assert len(pool.workers()) == 1
    with pool.checkout(), pool.checkout(), pool.checkout():
        assert len(pool.workers()) == 3 and pool.status().overflow == 1
        with pytest.raises(PoolTimeout):
            pool.execute("ping")
    pool.stop()


@pytest.mark.parametrize("strategy", ["lifo", "fifo"])
def test_strategy_picks_the_idle_worker(strategy):
    pool = start(size=2, strategy=strategy)
    with pool.checkout() as a:
        with pool.checkout() as b:
            pass
    # b was returned first, then a: lifo serves a (last in), fifo serves b
    with pool.checkout() as next_one:
        assert next_one.pid == (a.pid if strategy == "lifo" else b.pid)
    pool.stop()


def test_a_retired_workers_sessions_move_at_once_even_while_it_is_held(otpy_tree):
    """Health failed while the worker is checked out: it stops only at
    checkin, but its sessions already run on the replacement."""
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1)
    pool.subscribe()
    pool.execute("add", "kept", session="s")
    pool.execute("set_unhealthy_if", flag, session="s")
    with pool.checkout() as held:
        open(flag, "w").close()
        assert event("health_failed").worker == held.pid
        replacement = event("worker_started").worker
        os.remove(flag)
        assert pool.execute("notes", session="s") == ["kept"]  # replayed on the replacement
        assert pool.worker_of("s") == replacement != held.pid
        assert held.execute("ping") == ("pong", "notes", None)  # the holder still has it
    assert event("worker_exited").worker == held.pid  # stopped once returned
    pool.stop()


def test_a_retired_worker_whose_holder_raises_is_killed_at_checkin(otpy_tree):
    """Health failed while the worker is checked out, then the with-body
    raises: its state is unknown, so it is killed at the checkin (it used to
    be left alive, out of service, until the pool stopped)."""
    flag = os.path.join(otpy_tree.tmp_path, "sick")
    pool = start(size=1, health_interval=0.1)
    pool.subscribe()
    pool.execute("set_unhealthy_if", flag, session="s")
    with pytest.raises(ZeroDivisionError):
        with pool.checkout() as held:
            open(flag, "w").close()
            assert event("health_failed").worker == held.pid
            os.remove(flag)
            1 / 0
    exited = event("worker_exited")
    assert (exited.worker, exited.detail) == (held.pid, "('shutdown', 'checkout_replaced')")
    assert held.pid not in pool.workers()
    pool.stop()


def test_replays_and_health_checks_do_not_count_toward_max_commands():
    pool = start(size=1, max_commands=3, health_interval=0.05,
                 kwargs={"report_to": otpy.self()})
    pool.subscribe()
    pool.execute("add", "a", session="s")
    pool.execute("add", "b", session="s")
    sigkill(pool.workers()[0])
    fresh = event("worker_started").worker
    assert pool.execute("notes", session="s") == ["a", "b"]  # 2 replays + 1 command
    for _ in range(3):  # health checks of the fresh worker: none counts
        expect(lambda m: m == ("health_checked", fresh))
    pool.execute("ping")
    assert pool.workers() == [fresh]  # 2 commands so far
    pool.execute("ping")  # the 3rd
    assert event("recycled").worker == fresh
    pool.stop()
