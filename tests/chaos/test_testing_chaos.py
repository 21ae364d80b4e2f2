"""otpy.testing's pool helpers and chaos scenarios, against the real pool."""

from __future__ import annotations

import time

import pytest
from pool_workers import Notes

import otpy
from otpy.testing import ensure_pool_ready, inject_failure, wait_down, wait_event, wait_for
from otpy.testing import chaos
from otpy_pool import CommandTimeout, Pool, WorkerCrashed

DEADLINE = 10.0
MB = 1024 * 1024


def start_pool(tree, size=2, **options) -> Pool:
    tree.start_child(Pool.child_spec(Notes, name="pool", size=size, **options))
    pool = Pool("pool")
    ensure_pool_ready(pool, size)
    return pool


def pongs(results) -> bool:
    return all(r == ("pong", "notes", None) for r in results)


# ---- wait_event, ensure_pool_ready ------------------------------------------------------

def test_wait_event_sees_a_worker_die_and_its_replacement_start(otpy_tree):
    pool = start_pool(otpy_tree)
    pool.subscribe()
    victim = pool.workers()[0]
    inject_failure("crash", victim)
    exited = wait_event(pool, "worker_exited", DEADLINE, match=lambda e: e.worker == victim)
    assert exited.detail == "killed"
    started = wait_event(pool, "worker_started", DEADLINE)
    assert started.worker not in (victim,) and started.worker in pool.workers()


def test_wait_event_times_out_naming_the_kind(otpy_tree):
    pool = start_pool(otpy_tree, size=1)
    with pytest.raises(otpy.Timeout, match="'session_lost'"):
        wait_event(pool, "session_lost", timeout=0.05)


def test_ensure_pool_ready_waits_for_the_replacements(otpy_tree):
    pool = start_pool(otpy_tree, size=3)
    killed = chaos.kill_fraction(pool, 1.0)
    status = ensure_pool_ready(pool, 3)
    assert status.workers >= 3
    wait_for(lambda: not set(killed) & set(pool.workers()))
    with pytest.raises(otpy.Timeout, match="did not have 9 worker"):
        ensure_pool_ready(pool, 9, timeout=0.05)


# ---- scenarios ------------------------------------------------------------------------

def test_cascade_failure_kills_workers_one_after_another_and_the_pool_recovers(otpy_tree):
    pool = start_pool(otpy_tree, size=4)
    refs = []
    killed = chaos.cascade_failure(pool, workers=3, interval=0.05)
    assert len(set(killed)) == 3
    for pid in killed:
        refs.append(otpy.monitor(pid))
    for ref in refs:
        assert wait_down(ref, DEADLINE) in ("killed", "noproc")
    ensure_pool_ready(pool, 4)
    wait_for(lambda: pool.status().worker_restarts >= 3)
    assert pool.execute("ping") == ("pong", "notes", None)


def test_kill_fraction_under_load_loses_no_request(otpy_tree):
    pool = start_pool(otpy_tree, size=5)
    killed = chaos.kill_fraction(pool, 0.6)
    assert len(killed) == 3
    results = chaos.thundering_herd(pool, 20, "ping")  # right behind the kills
    assert len(results) == 20
    # a request either ran or failed saying its worker died: none vanished
    assert all(r == ("pong", "notes", None) or isinstance(r, WorkerCrashed) for r in results)
    ensure_pool_ready(pool, 5)


def test_thundering_herd_returns_results_in_request_order(otpy_tree):
    pool = start_pool(otpy_tree, size=2)
    results = chaos.thundering_herd(pool, 30, "echo", "x")
    assert results == [(("x",), {})] * 30
    with pytest.raises(ValueError, match="requests"):
        chaos.thundering_herd(pool, 0, "ping")


def test_slow_worker_delays_its_commands(otpy_tree):
    pool = start_pool(otpy_tree, size=1)
    with chaos.slow_worker(pool, 0.3):
        started = time.monotonic()
        assert pool.execute("ping") == ("pong", "notes", None)
        assert time.monotonic() - started >= 0.3


def test_memory_leak_is_recycled_by_max_memory(otpy_tree):
    pool = start_pool(otpy_tree, size=1, max_memory=150 * MB)
    pool.subscribe()
    victim = pool.workers()[0]
    chaos.memory_leak(pool, rate=1000, limit=300)
    wait_for(lambda: otpy.process_info(victim)["memory"] > 150 * MB)
    assert pool.execute("ping") == ("pong", "notes", None)  # its check after a command
    wait_event(pool, "recycled", DEADLINE, match=lambda e: e.worker == victim)
    wait_down(victim, DEADLINE)  # retired: it stops once idle
    ensure_pool_ready(pool, 1)
    assert victim not in pool.workers()


def test_a_corrupted_command_times_out_and_the_pool_replaces_its_worker(otpy_tree):
    pool = start_pool(otpy_tree, size=1, command_timeout=1.0)
    worker = pool.workers()[0]
    chaos.corrupt_messages(pool, 1)
    with pytest.raises(CommandTimeout):  # it never arrived readable: nobody could answer
        pool.execute("ping")
    wait_down(worker, DEADLINE)  # the pool replaced the worker that did not answer
    ensure_pool_ready(pool, 1)
    assert pool.execute("ping") == ("pong", "notes", None)


# ---- ChaosMonkey ------------------------------------------------------------------------

def idle() -> None:
    otpy.receive()


class ListedPool:
    """A pool whose list still holds a worker that died (its server has not
    taken the Down yet): what a scenario sees right after another one."""

    def __init__(self, pids):
        self.pids = pids

    def workers(self):
        return list(self.pids)


def test_scenarios_skip_a_listed_worker_that_is_already_dead(otpy_tree):
    dead, first, second = (otpy.spawn(idle) for _ in range(3))
    inject_failure("crash", dead)
    wait_down(dead)
    refs = {pid: otpy.monitor(pid) for pid in (first, second)}
    assert chaos.cascade_failure(ListedPool([dead, first]), workers=1, interval=0) == [first]
    assert chaos.kill_fraction(ListedPool([dead, second]), 1.0) == [second]
    assert [wait_down(refs[pid]) for pid in (first, second)] == ["killed", "killed"]


def test_the_same_seed_gives_the_same_kinds_and_positions(otpy_tree):
    for i in range(4):
        otpy_tree.start_child(otpy.ChildSpec(f"idle{i}", otpy.spawn_link, args=(idle,)))

    def sequence(seed):
        monkey = chaos.ChaosMonkey(otpy_tree, kinds=("slow", "hang", "partition"), seed=seed,
                                   interval=5.0, slow={"delay": 0.01})
        steps = [monkey.step() for _ in range(6)]
        monkey.heal()
        candidates = monkey.candidates()
        return [(kind, candidates.index(pid)) for _t, kind, pid in steps]

    first = sequence(7)
    assert sequence(7) == first
    assert sequence(8) != first or sequence(9) != first
    monkey = chaos.ChaosMonkey(otpy_tree)
    assert otpy_tree.supervisor not in monkey.candidates()
    assert otpy.self() not in monkey.candidates()
    assert len(monkey.candidates()) == 4


def test_a_monkey_in_the_background_kills_workers_and_the_pool_stays_whole(otpy_tree):
    pool = start_pool(otpy_tree, size=3)
    with chaos.ChaosMonkey(pool, kinds=("crash",), interval=0.05, seed=3) as monkey:
        wait_for(lambda: len(monkey.log) >= 3)
    assert all(kind == "crash" for _t, kind, _pid in monkey.log)
    ensure_pool_ready(pool, 3)
    assert pool.execute("ping") == ("pong", "notes", None)


def test_a_failure_under_a_monkey_carries_its_seed(otpy_tree):
    pool = start_pool(otpy_tree, size=1)
    with pytest.raises(ZeroDivisionError) as info:
        with chaos.ChaosMonkey(pool, kinds=("slow",), interval=5.0, seed=1234):
            1 / 0
    assert "ChaosMonkey seed=1234" in info.value.__notes__
    with pytest.raises(ValueError, match="kinds"):
        chaos.ChaosMonkey(pool, kinds=("melt",))


# ---- run_load, pool_monitor ---------------------------------------------------------------

def test_run_load_reports_what_it_measured(otpy_tree):
    pool = start_pool(otpy_tree, size=2)
    report = chaos.run_load(pool, clients=4, duration=0.5, mix={"ping": 3, "echo": (1, ("a",))})
    assert report.operations > 0 and report.throughput > 0
    assert report.error_rate == 0 and report.errors == {}
    assert 0 < report.p50 <= report.p90 <= report.p95 <= report.p99 <= report.max
    assert report.recovered == 0


def test_run_load_counts_errors_by_class(otpy_tree):
    pool = start_pool(otpy_tree, size=2)
    report = chaos.run_load(pool, clients=2, duration=0.3, mix={"ping": 1, "fail": (1, ("x",))},
                            rate=200, ramp=0.1)
    assert set(report.errors) == {"KeyError"}
    assert 0 < report.error_rate < 1
    assert report.errors["KeyError"] == round(report.error_rate * report.operations)


def test_run_load_with_sessions_recovers_them_after_a_crash(otpy_tree):
    pool = start_pool(otpy_tree, size=2)
    for i in range(2):
        pool.execute("add", "first", session=f"s{i}")
    pool.subscribe()
    victim = pool.worker_of("s0")
    inject_failure("crash", victim)
    wait_event(pool, "worker_exited", DEADLINE, match=lambda e: e.worker == victim)
    report = chaos.run_load(pool, clients=2, duration=0.3, mix={"notes": 1},
                            session_of=lambda i: f"s{i}")
    assert report.recovered >= 1 and report.errors == {}


def test_pool_monitor_collects_the_pools_events(otpy_tree):
    pool = start_pool(otpy_tree, size=2)
    with chaos.pool_monitor(pool) as mon:
        for _ in range(11):  # checkouts (a session-less execute claims: no event)
            with pool.checkout() as worker:
                worker.execute("ping")
        with pytest.raises(KeyError):
            pool.execute("fail", "x")
        victim = pool.workers()[0]
        inject_failure("crash", victim)
        wait_for(lambda: mon.stats()["worker_restarts"] >= 1)
        stats = mon.stats()
    assert stats["checkouts"] >= 11 and stats["checkins"] >= 11
    assert stats["errors"] == 1
    assert set(stats["latency"]) == {"p50", "p90", "p99"}
    assert mon.stats() == mon.stop()  # final once the block ended


def test_a_pool_monitor_that_dies_raises_exited_at_once(otpy_tree):
    pool = start_pool(otpy_tree, size=1)
    with pytest.raises(otpy.Exited, match="the pool monitor died: 'killed'"):
        with chaos.pool_monitor(pool) as mon:
            inject_failure("crash", mon.pid)
            wait_down(mon.pid)


def test_bad_scenario_arguments_name_the_problem(otpy_tree):
    pool = start_pool(otpy_tree, size=1)
    with pytest.raises(ValueError, match="fraction"):
        chaos.kill_fraction(pool, 1.5)
    with pytest.raises(ValueError, match="workers"):
        chaos.cascade_failure(pool, workers=0)
    with pytest.raises(ValueError, match="clients"):
        chaos.run_load(pool, clients=0)
    with pytest.raises(ValueError, match="weight"):
        chaos.run_load(pool, clients=1, duration=0.1, mix={"ping": 0})
