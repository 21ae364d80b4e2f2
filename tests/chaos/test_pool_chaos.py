"""The pool under chaos and load: real faults in real worker processes while
50 client processes keep it busy (``otpy.testing.chaos``).

Each scenario checks two things. The pool stays whole: afterwards it answers
``status()`` with all its workers back, nothing checked out or queued, and a
burst of requests all succeed. No request is lost: every request a client
made came back, with a result or a clear error of the kind the fault explains
(WorkerCrashed for a worker killed mid-command, CommandTimeout for one that
could not answer), counted on both sides where the fault allows it.

The seeds' targets for the load test (50 clients: average latency under
100 ms, p99 under 500 ms, over 1,000 operations/s, error rate under 1%) are
asserted in ``test_load_targets_with_50_clients``; the error-rate target in
every chaos scenario too. Figures are printed (``pytest -s``).

Runs are short (about a second of load each) so that the whole file takes
well under a minute on a 2-core machine.
"""

from __future__ import annotations

import threading

import pytest
from pool_workers import Notes

import otpy
from otpy.testing import ensure_pool_ready, inject_failure, wait_down, wait_for
from otpy.testing import chaos
from otpy_pool import CommandTimeout, Pool, WorkerCrashed

pytestmark = pytest.mark.layer("full")  # real pool workers

CLIENTS = 50
SIZE = 4
DURATION = 1.5  # seconds of load per scenario
DEADLINE = 20.0  # for anything to happen: a deadline for a broken test, never a pause
MB = 1024 * 1024
MIX = {"ping": 7, "echo": (3, ("x",))}


def start_pool(tree, size: int = SIZE, **options) -> Pool:
    tree.start_child(Pool.child_spec(Notes, name="pool", size=size, **options))
    pool = Pool("pool")
    ensure_pool_ready(pool, size)
    return pool


def show(name: str, report: chaos.LoadReport) -> None:
    print(f"\n{name}: {report.operations} ops in {report.duration:.2f}s = "
          f"{report.throughput:,.0f} ops/s; avg {report.avg * 1e3:.1f} ms, "
          f"p50 {report.p50 * 1e3:.1f}, p99 {report.p99 * 1e3:.1f}, "
          f"max {report.max * 1e3:.1f} ms; errors {report.errors} "
          f"({report.error_rate:.3%}); sessions recovered {report.recovered}")


def under_load(pool: Pool, fault, *, clients: int = CLIENTS, duration: float = DURATION,
               **load):
    """Run ``fault()`` in a thread once the load is on (the pool has counted
    some commands) while ``run_load`` runs here; (report, what fault
    returned). Asserts the load went on after the fault: the fault really
    happened under load, and the pool served requests after it."""
    started = pool.status().total_commands
    done = threading.Event()
    outcome: dict = {}

    def body() -> None:
        try:
            wait_for(lambda: pool.status().total_commands >= started + 200, DEADLINE)
            outcome["value"] = fault()
            outcome["after"] = pool.status().total_commands
        except BaseException as exc:  # raised in the test below
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=body, name="chaos-fault", daemon=True)
    thread.start()
    try:
        report = chaos.run_load(pool, clients=clients, duration=duration,
                                timeout=duration + DEADLINE, mix=load.pop("mix", MIX), **load)
    finally:
        assert done.wait(DEADLINE), "the fault did not finish"
        thread.join(DEADLINE)
    if "error" in outcome:
        raise outcome["error"]
    assert pool.status().total_commands > outcome["after"] + 50, \
        "the load was over before the fault: it was not injected under load"
    return report, outcome["value"]


def assert_answered(report: chaos.LoadReport, allowed=()) -> None:
    """Every request came back (run_load returns only once every client has
    reported: a request that never returned would be a Timeout) with a result
    or one of the ``allowed`` errors, and errors stay under the seeds' 1%."""
    assert report.operations > 0
    assert set(report.errors) <= {cls.__name__ for cls in allowed}, report.errors
    assert report.error_rate < 0.01, report.errors


def assert_whole(pool: Pool, size: int = SIZE, requests: int = 100) -> None:
    """All workers back, nothing checked out or queued, and a burst of
    requests released together all succeed, in order."""
    ensure_pool_ready(pool, size, timeout=DEADLINE)

    def settled():
        status = pool.status()
        return status if status.busy == 0 and status.queued == 0 else None

    status = wait_for(settled, DEADLINE)
    assert status.workers == size and status.idle == size
    results = chaos.thundering_herd(pool, requests, "echo", "after")
    assert results == [(("after",), {})] * requests


# ---- load ------------------------------------------------------------------------------------

def load_without_faults(pool: Pool, name: str, **options) -> chaos.LoadReport:
    """50 clients for 2 s; every request answered, the pool ran exactly the
    requests the clients counted, and the seeds' latency targets met."""
    before = pool.status()
    report = chaos.run_load(pool, clients=CLIENTS, duration=2.0, mix=MIX,
                            timeout=2.0 + DEADLINE, **options)
    show(name, report)
    after = pool.status()
    assert report.errors == {} and report.error_rate == 0
    assert after.total_commands - before.total_commands == report.operations
    assert report.avg < 0.100, report
    assert report.p99 < 0.500, report
    return report


def test_load_targets_with_50_clients(otpy_tree):
    """The seeds' load test: 50 clients, each with its own session (its
    commands run on the worker the session is bound to)."""
    pool = start_pool(otpy_tree)
    report = load_without_faults(pool, "load, 50 clients with sessions",
                                 session_of=lambda i: f"client{i}")
    assert report.throughput > 1000, report  # the seeds' last target
    assert_whole(pool)


def test_load_through_checkout_with_50_clients(otpy_tree):
    """50 clients without sessions: every request checks a worker out of the
    pool's server and back in, so that one process paces them all. The
    latency and error targets are asserted; the throughput is printed only
    (1,100 to 1,500/s on the shared 2-core machine: too close to 1,000 for a
    test that must not fail when the machine is busy)."""
    pool = start_pool(otpy_tree)
    load_without_faults(pool, "load, 50 clients through checkout")
    assert_whole(pool)


def test_thundering_herd_of_500_requests_all_answered_in_order(otpy_tree):
    pool = start_pool(otpy_tree)
    before = pool.status()
    with chaos.pool_monitor(pool) as mon:
        results = chaos.thundering_herd(pool, 500, "echo", "herd")
    stats = mon.stats()
    assert results == [(("herd",), {})] * 500
    assert pool.status().total_commands - before.total_commands == 500
    # the queued ones were handed out by the server (a checkout and a checkin
    # event each); those that found a worker free claimed it (no event)
    assert stats["checkouts"] == stats["checkins"] <= 500
    assert stats["max_queue_depth"] > SIZE  # they really came at once: callers queued
    print(f"\nherd: max queue depth {stats['max_queue_depth']}, "
          f"worker held p99 {stats['latency']['p99'] * 1e3:.1f} ms")
    assert_whole(pool)


# ---- crashes under load ----------------------------------------------------------------------

def test_cascade_failure_under_load(otpy_tree):
    pool = start_pool(otpy_tree)
    before = pool.status()
    report, killed = under_load(pool,
                                lambda: chaos.cascade_failure(pool, workers=3, interval=0.1))
    show("cascade of 3 kills", report)
    assert len(set(killed)) == 3
    for pid in killed:
        assert wait_down(pid, DEADLINE) in ("killed", "noproc")
    # a worker killed mid-command fails that command (it may not be idempotent): at most one each
    assert_answered(report, allowed=(WorkerCrashed,))
    assert report.errors.get("WorkerCrashed", 0) <= len(killed)
    assert_whole(pool)
    assert pool.status().worker_restarts - before.worker_restarts >= 3
    assert not set(killed) & set(pool.workers())


def test_sixty_percent_of_workers_killed_under_load(otpy_tree):
    size = 5
    pool = start_pool(otpy_tree, size=size)
    before = pool.status()
    report, killed = under_load(pool, lambda: chaos.kill_fraction(pool, 0.6))
    show("60% killed at once", report)
    assert len(killed) == 3
    assert_answered(report, allowed=(WorkerCrashed,))
    assert report.errors.get("WorkerCrashed", 0) <= len(killed)
    assert_whole(pool, size)
    assert pool.status().worker_restarts - before.worker_restarts >= 3


# ---- degraded workers ------------------------------------------------------------------------

def test_a_slow_worker_under_load_slows_nothing_into_an_error(otpy_tree):
    pool = start_pool(otpy_tree, command_timeout=2.0)
    before = pool.status()
    slow = []

    def make_slow():
        slow.append(chaos.slow_worker(pool, 0.05, tree=otpy_tree))
        return slow[0].target

    try:
        report, victim = under_load(pool, make_slow)
    finally:
        for injection in slow:
            injection.heal()
    show("one worker slow (+50 ms a message)", report)
    # slowness is not failure: every request got its result, none was counted twice or lost
    assert report.errors == {}
    assert pool.status().total_commands - before.total_commands == report.operations
    assert victim in pool.workers()  # still a worker: nothing killed it
    assert_whole(pool)


def test_a_memory_leak_is_recycled_by_max_memory_under_load(otpy_tree):
    pool = start_pool(otpy_tree, max_memory=150 * MB)
    before = pool.status()

    def leak():
        victim = pool.workers()[0]
        chaos.memory_leak(pool, rate=2000, limit=300, worker=victim, tree=otpy_tree)
        wait_for(lambda: otpy.process_info(victim)["memory"] > 150 * MB, DEADLINE)
        return victim

    # the load goes on after the worker passed max_memory (checked by under_load): its next
    # command finds it worn out, and the pool retires it at its checkin
    report, victim = under_load(pool, leak)
    show("memory leak recycled", report)
    wait_down(victim, DEADLINE)
    assert victim not in pool.workers()
    # recycling is planned: no request failed for it, each was run once
    assert report.errors == {}
    assert pool.status().total_commands - before.total_commands == report.operations
    assert pool.status().worker_restarts == before.worker_restarts  # not counted as a crash
    assert_whole(pool)


def test_corrupt_messages_under_load(otpy_tree):
    pool = start_pool(otpy_tree, command_timeout=0.5)
    report, victim = under_load(pool, lambda: (
        chaos.corrupt_messages(pool, 2, tree=otpy_tree).target))
    show("2 corrupt messages", report)
    # a command that arrived corrupted could not be answered: its caller got CommandTimeout
    # and the pool replaced the worker; no other request suffered
    assert_answered(report, allowed=(CommandTimeout,))
    assert 1 <= report.errors.get("CommandTimeout", 0) <= 2
    wait_down(victim, DEADLINE)
    assert_whole(pool)


def test_a_partitioned_worker_under_load(otpy_tree):
    pool = start_pool(otpy_tree, command_timeout=0.5)
    before = pool.status()
    injections = []

    def partition():
        victim = pool.workers()[0]
        injections.append(inject_failure("partition", victim, tree=otpy_tree))
        return victim

    try:
        report, victim = under_load(pool, partition)
    finally:
        for injection in injections:
            injection.heal()
    show("one worker partitioned", report)
    # its command was dropped on the way in: CommandTimeout, and the pool replaced it
    assert_answered(report, allowed=(CommandTimeout,))
    assert report.errors.get("CommandTimeout", 0) >= 1
    wait_down(victim, DEADLINE)
    assert_whole(pool)
    assert pool.status().worker_restarts - before.worker_restarts >= 1


# ---- everything at once -----------------------------------------------------------------------

def test_combined_faults_under_load_with_sessions(otpy_tree):
    pool = start_pool(otpy_tree, command_timeout=0.5, max_memory=150 * MB)
    sessions = [f"s{i}" for i in range(0, CLIENTS, 2)]
    for sid in sessions:
        pool.execute("add", f"note of {sid}", session=sid)
    kinds = ("crash", "hang", "slow", "partition", "corrupt", "memory")
    # seed 4 draws all six kinds in its first seven steps, but a step whose target dies
    # meanwhile is skipped: its memory step (200 MB at once) usually stalls a worker past the
    # command deadline, and the pool kills it before the fault is acknowledged. So five are
    # required; the memory leak has its own scenario above.
    required = {"crash", "hang", "slow", "partition", "corrupt"}
    monkey = chaos.ChaosMonkey(pool, kinds=kinds, interval=0.15, seed=4,
                               slow={"delay": 0.02}, memory={"megabytes": 200})

    def faults():
        with monkey:
            wait_for(lambda: required <= {kind for _t, kind, _p in monkey.log}, DEADLINE)
        return list(monkey.log)

    report, log = under_load(pool, faults, duration=3.5, mix={"ping": 6, "notes": 4},
                             session_of=lambda i: f"s{i}" if i % 2 == 0 else None)
    show(f"combined faults (seed {monkey.seed}: {[kind for _t, kind, _p in log]})", report)
    assert required <= {kind for _t, kind, _p in log}
    assert_answered(report, allowed=(WorkerCrashed, CommandTimeout))
    assert_whole(pool)
    # no session lost its state: each still has the note it was given, replayed where needed
    for sid in sessions:
        assert pool.execute("notes", session=sid) == [f"note of {sid}"]


# ---- a worker SIGKILLed every half second ------------------------------------------------------

THREADS = 64
SESSIONS = 200
KILLS = 8  # one every 0.5 s


def test_a_worker_killed_every_half_second_fails_only_the_running_commands(otpy_tree):
    """64 threads of this program run a non-idempotent command (each run
    appends its tag to a file) on 200 sessions while a worker is SIGKILLed
    every 0.5 s. Only the command a killed worker was running fails
    (WorkerCrashed, at most one per kill); every other command, queued
    behind it or sent to it after it died, runs on a new worker exactly
    once; every session keeps its replayed state. Counts printed (-s)."""
    pool = start_pool(otpy_tree)
    log = f"{otpy_tree.tmp_path}/runs"
    sessions = [f"s{i}" for i in range(SESSIONS)]
    for sid in sessions:
        pool.execute("add", f"note of {sid}", session=sid)
    stop = threading.Event()
    outcomes: dict[str, object] = {}  # tag -> result or exception

    def client(t: int) -> None:
        n = 0
        while not stop.is_set():
            tag = f"{t}.{n}"
            try:
                outcomes[tag] = pool.execute("record", log, tag,
                                             session=sessions[(t + n * THREADS) % SESSIONS])
            except Exception as exc:  # counted below
                outcomes[tag] = exc
            n += 1

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    monkey = chaos.ChaosMonkey(pool, kinds=("crash",), interval=0.5, seed=22)
    with monkey:
        wait_for(lambda: len(monkey.log) >= KILLS, DEADLINE)
    stop.set()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a caller never got an answer"
    kills = len(monkey.log)
    with open(log) as f:
        runs = f.read().split()
    assert len(runs) == len(set(runs)), "a command ran twice"
    failed = {tag: exc for tag, exc in outcomes.items() if isinstance(exc, Exception)}
    assert {type(exc) for exc in failed.values()} <= {WorkerCrashed}, failed
    assert len(failed) <= kills  # a worker runs one command at a time
    ok = [tag for tag in outcomes if tag not in failed]
    assert set(ok) <= set(runs)  # every answered command ran, once
    written = sum(tag in set(runs) for tag in failed)  # killed after its write
    print(f"\nkilled every 0.5 s: {len(outcomes)} commands from {THREADS} threads on "
          f"{SESSIONS} sessions, {kills} kills, {len(failed)} failed (WorkerCrashed: each "
          f"the command its worker's page named as running), {written} of them after "
          f"writing their line; {len(runs)} runs recorded, none twice")
    assert_whole(pool)
    for sid in sessions:  # replayed wherever its worker died
        assert pool.execute("notes", session=sid) == [f"note of {sid}"]
