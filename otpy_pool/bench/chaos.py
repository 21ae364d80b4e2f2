"""The chaos scenario of ``python -m otpy_pool.bench`` (key
``chaos_kill_60pct``, and ``tests/chaos/test_recovery_chaos.py``): callers
run protected commands while most of the pool's workers are SIGKILLed."""

from __future__ import annotations

import os
import random
import signal
import tempfile
import time
from typing import Any

import otpy
from otpy import lowlevel
from otpy_pool import Policy, Pool, Recovery, Worker, command, protect

#: retries for the idempotent command; the non-idempotent one is never retried
POLICIES = {"worker_crashed": Policy(retries=3, failover=True), "timeout": Policy(retries=2),
            "session_lost": Policy(retries=2)}


class ChaosWorker(Worker):
    """Commands for the chaos scenario: an idempotent one, and a
    non-idempotent one that records each run in a file (to prove at most once)."""

    def init(self, log: str) -> None:
        self.log = log

    @command
    def run(self, session: Any, x: Any) -> Any:
        return x

    @command
    def pid(self, session: Any) -> int:
        return os.getpid()

    @command
    def charge(self, session: Any, token: str) -> str:
        with open(self.log, "a") as f:
            f.write(token + "\n")
        return token


def wait_whole(pool: Pool, size: int, timeout: float = 10.0) -> float:
    """Seconds until the pool has ``size`` live workers again."""
    t = time.perf_counter()
    end = t + timeout
    while len(pool.workers()) < size:
        if time.perf_counter() > end:
            raise otpy.Timeout(f"the pool did not get back to {size} workers in {timeout}s")
    return time.perf_counter() - t


def _chaos_caller(protected: Any, parent: otpy.Pid, caller: int, calls: int,
                  charge_every: int) -> None:
    otpy.send(parent, ("ready", caller))
    otpy.receive(timeout=60, match=lambda m: m == "go")
    ok = failed = charges_failed = 0
    errors: dict[str, int] = {}
    for i in range(calls):
        try:
            if charge_every and i % charge_every == 0:
                try:
                    protected.execute("charge", f"{caller}.{i}", session=f"c{caller}")
                except Exception:
                    charges_failed += 1
                continue
            protected.execute("run", i, session=f"c{caller}")
            ok += 1
        except Exception as exc:
            failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    otpy.send(parent, ("result", caller, ok, failed, charges_failed, errors))


def chaos_kill(fraction: float = 0.6, callers: int = 8, calls: int = 500, size: int = 5,
               interval: float = 0.02, charge_every: int = 10, placement: Any = None) -> dict:
    """``callers`` processes run protected commands on a pool of ``size``
    workers while ``fraction`` of the workers are SIGKILLed, ``interval``
    apart. Idempotent "run" commands have retry policies; every
    ``charge_every``-th call is a non-idempotent "charge" that records its run.
    Returns the success rate of the idempotent calls, calls lost (never
    answered), charges run twice, and seconds until the pool was whole again.
    With a ``placement`` the processes killed are the workers' actors."""
    with tempfile.TemporaryDirectory(prefix="otpy-chaos-") as tmp:
        log = os.path.join(tmp, "charges")
        name = f"chaos.{time.monotonic_ns()}"
        pool = Pool.start_link(ChaosWorker, args=(log,), size=size, name=name,
                               placement=placement)
        recovery = Recovery.start_link(f"{name}.recovery", POLICIES)
        protected = protect(pool, recovery=recovery, idempotent={"run"}, deadline=10.0)
        pids: list[otpy.Pid] = []
        try:
            targets = _worker_os_pids(pool, size, placement)
            _start_callers(pids, protected, callers, calls, charge_every)
            killed = _kill_some(targets, round(size * fraction), interval)
            whole = wait_whole(pool, size, timeout=60)  # from the last kill
            results, lost = _results(len(pids))
            return {**_outcome(results, lost, log), "whole_after_s": round(whole, 3),
                    "workers_killed": killed,
                    "worker_restarts": pool.status().worker_restarts,
                    "recovered": {k: v.recovered for k, v in recovery.stats().items()}}
        finally:
            for pid in pids:
                lowlevel.stop_process(pid, "kill", timeout=5)
            recovery.stop()
            pool.stop()


def _start_callers(pids: list[otpy.Pid], protected: Any, callers: int, calls: int,
                   charge_every: int) -> None:
    """Start the callers (into ``pids``, for the caller to stop) and let them go at once."""
    me = otpy.self()
    for c in range(callers):
        pids.append(otpy.spawn_link(_chaos_caller, protected, me, c, calls, charge_every))
    for _ in pids:
        otpy.receive(timeout=30, match=lambda m: type(m) is tuple and m[0] == "ready")
    for pid in pids:
        otpy.send(pid, "go")


def _worker_os_pids(pool: Pool, size: int, placement: Any) -> list[int]:
    """The processes running the workers' commands: the workers themselves,
    or with a placement, what each says it runs in (a session per worker:
    the least loaded takes each next session)."""
    if placement is None:
        return [w.os_pid for w in pool.workers()]
    sessions = [("chaos.pid", i) for i in range(size)]
    pids = [pool.execute("pid", session=sid) for sid in sessions]
    for sid in sessions:
        pool.end_session(sid)
    return pids


def _kill_some(targets: list[int], count: int, interval: float) -> int:
    """SIGKILL ``count`` of the workers' processes, ``interval`` apart; how many."""
    victims = random.Random(1).sample(targets, count)
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(interval)  # the scenario's pacing, not a synchronisation
    return len(victims)


def _results(callers: int) -> tuple[list[tuple], int]:
    """Each caller's result, and how many never gave one (calls lost)."""
    results = []
    lost = 0
    for _ in range(callers):
        try:
            results.append(otpy.receive(timeout=120, match=lambda m: type(m) is tuple
                                        and m[0] == "result"))
        except otpy.Timeout:
            lost += 1
    return results, lost


def _outcome(results: list[tuple], lost: int, log: str) -> dict[str, Any]:
    """What the callers saw, and charges that ran twice (from the charges' log)."""
    ok = sum(r[2] for r in results)
    failed = sum(r[3] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r[5].items():
            errors[k] = errors.get(k, 0) + v
    with open(log) as f:
        tokens = f.read().split()
    return {"success_rate": round(ok / max(1, ok + failed), 5), "calls_ok": ok,
            "calls_failed": failed, "callers_lost": lost,
            "charges_run_twice": len(tokens) - len(set(tokens)),
            "charges_failed": sum(r[4] for r in results), "errors": errors}
