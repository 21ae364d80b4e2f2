"""``python -m otpy_pool.bench``: the pool's figures beside the pools users
would pick instead, in one run.

As with ``python -m otpy.bench``, a latency means something only next to a
reference measured in the same run, so the report gives ratios, and
``--compare`` checks them against a saved baseline.

    python -m otpy_pool.bench                  # full run
    python -m otpy_pool.bench --quick          # seconds; same keys, fewer samples
    python -m otpy_pool.bench --peers          # also each peer's fate when a busy worker
                                               # is SIGKILLed
    python -m otpy_pool.bench --json out.json  # also write the report as JSON ('-': stdout)
    python -m otpy_pool.bench --compare base.json [--margin 0.25]

Peers (billiard, pebble, loky, pybreaker, limits) are the ``bench`` extra:
``pip install -e '.[bench]'``. One that is not installed is reported as
skipped. The node's logs stay out of the output unless ``--verbose``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from typing import Any, Callable

import otpy
from otpy import lowlevel
from otpy.bench import Case, Skipped, call_rtt, cli, run_cases, summarize

from otpy_pool import CommandTimeout, Pool, Worker, WorkerCrashed, command

from . import executor as _executor
from . import peers as _peers
from .aio import async_calls
from .async_worker import async_worker_concurrency
from .ray import ray_calls
from .scrape import scraped_execute
from .chaos import chaos_kill, wait_whole

_ns = time.perf_counter_ns

#: the pools measured beside this one (each needs its module: the ``bench`` extra)
PEERS = _peers.PEERS

# Ratios are "lower is better" unless named *_over_* with a rate on top (see RATES).
RATIOS = {
    "execute_over_call_p50": ("pool_execute_us", "call_rtt_us"),
    "execute_over_billiard_p50": ("pool_execute_us", "billiard_apply_us"),
    "execute_over_mp_pool_p50": ("pool_execute_us", "mp_pool_apply_us"),
    "execute_stateless_over_call_p50": ("pool_execute_stateless_us", "call_rtt_us"),
    "execute_stateless_over_billiard_p50": ("pool_execute_stateless_us", "billiard_apply_us"),
    "breaker_over_pybreaker": ("breaker_overhead_ns", "pybreaker_overhead_ns"),
    "limiter_over_limits_p50": ("limiter_hit_us", "limits_hit_us"),
    "ray_execute_over_actor_call_p50": ("ray_execute_us", "ray_actor_call_us"),
    "aexecute_over_execute_p50": ("pool_aexecute_us", "pool_execute_alt_us"),
    "executor_submit_result_over_ppe_p50": ("executor_submit_result_us",
                                            "process_pool_executor_apply_us"),
    "execute_scraped_over_unscraped_p50": ("pool_execute_scraped_us",
                                           "pool_execute_unscraped_us"),
}
# Rate ratios: higher is better, so --compare reads them the other way round.
RATES = {
    "burst_over_mp_pool": ("pool_burst_per_s", "mp_pool_burst_per_s"),
    "burst_sync_over_mp_pool": ("pool_burst_sync_per_s", "mp_pool_burst_per_s"),
    "aexecute_concurrent_over_burst": ("aexecute_concurrent_per_s", "pool_burst_per_s"),
    "executor_map_chunked_over_ppe": ("executor_map_chunked_per_s",
                                      "process_pool_executor_map_chunked_per_s"),
}


class BenchWorker(Worker):
    """The no-op commands the benchmark runs."""

    @command(replay=True)
    def remember(self, session: Any, key: Any, value: Any) -> Any:
        session.state[key] = value
        return key

    @command
    def noop(self, session: Any, x: Any = None) -> Any:
        return x

    @command
    def recall(self, session: Any, key: Any) -> Any:
        return session.state.get(key)

    @command
    def whoami(self, session: Any) -> int:
        return os.getpid()

    @command
    def spin(self, session: Any, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass


# ---- cases ---------------------------------------------------------------------

def pool_execute(n: int, warmup: int, session: Any) -> dict:
    """One caller, 2 workers: a no-op command, on a session or stateless (session=None)."""
    pool = Pool.start_link(BenchWorker, size=2)
    try:
        samples = []
        for i in range(warmup + n):
            t = _ns()
            pool.execute("noop", i, session=session)
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e3)
    finally:
        pool.stop()


def _burst_caller(pool: Pool, parent: otpy.Pid, count: int, session: Any,
                  pipelined: bool) -> None:
    otpy.send(parent, ("ready", otpy.self()))
    otpy.receive(match=lambda m: m == "go")
    if pipelined:  # all of its commands outstanding, a window at a time
        pool.execute_many("noop", [(i,) for i in range(count)], session=session)
    else:  # one at a time
        for i in range(count):
            pool.execute("noop", i, session=session)
    otpy.send(parent, ("done", otpy.self()))


def pool_burst(total: int, callers: int = 8, size: int = 2, pipelined: bool = True) -> int:
    """``callers`` processes run ``total`` no-op session commands between them
    (each its own session), ``size`` workers: commands per second. Pipelined
    (``execute_many``), the commands are outstanding at once as the peers'
    submit-all-then-wait; else each caller waits for each command."""
    pool = Pool.start_link(BenchWorker, size=size)
    me = otpy.self()
    pids = []
    try:
        for c in range(callers):
            pids.append(otpy.spawn_link(_burst_caller, pool, me, total // callers, f"s{c}",
                                        pipelined))
        for _ in pids:
            otpy.receive(timeout=30, match=lambda m: type(m) is tuple and m[0] == "ready")
        t = time.perf_counter()
        for pid in pids:
            otpy.send(pid, "go")
        for _ in pids:
            otpy.receive(timeout=300, match=lambda m: type(m) is tuple and m[0] == "done")
        return int(callers * (total // callers) / (time.perf_counter() - t))
    finally:
        for pid in pids:
            lowlevel.stop_process(pid, "kill", timeout=5)
        pool.stop()


def worker_crash(n: int) -> dict:
    """SIGKILL a worker in the middle of a command: from the kill to its
    caller's WorkerCrashed (``error_ms``), and to a replacement worker serving
    a command (``replaced_ms``). Times are CLOCK_MONOTONIC, shared by processes."""
    pool = Pool.start_link(BenchWorker, size=2)
    me = otpy.self()
    errors, replaced = [], []
    try:
        pool.execute("noop", session="anchor")  # keeps the survivor the busier worker
        for i in range(n):
            session = f"victim{i}"
            pool.execute("noop", session=session)
            victim = pool.worker_of(session)
            old = {w.os_pid for w in pool.workers()}
            killer = otpy.spawn(_kill_when_busy, victim.os_pid, me)
            try:
                pool.execute("spin", 30.0, session=session, timeout=60)
                raise AssertionError("the command outlived its worker")
            except WorkerCrashed:
                crashed_at = time.monotonic()
            killed_at = otpy.receive(timeout=10, match=lambda m: type(m) is tuple
                                     and m[0] == "killed_at")[1]
            errors.append(crashed_at - killed_at)
            for k in range(100_000):  # a new session binds to the least loaded: the replacement
                probe = f"probe{i}.{k}"
                served_by = pool.execute("whoami", session=probe)
                pool.end_session(probe)
                if served_by not in old:
                    break
            replaced.append(time.monotonic() - killed_at)
            pool.end_session(session)
            lowlevel.stop_process(killer, "kill", timeout=5)
        return {"error": summarize([int(x * 1e9) for x in errors], 1e6),
                "replaced": summarize([int(x * 1e9) for x in replaced], 1e6)}
    finally:
        pool.stop()


def _kill_when_busy(os_pid: int, parent: otpy.Pid) -> None:
    """SIGKILL ``os_pid`` once it is running a command (its CPU time grows),
    then tell ``parent`` when."""
    import psutil

    proc = psutil.Process(os_pid)
    start = sum(proc.cpu_times()[:2])
    while sum(proc.cpu_times()[:2]) - start < 0.005:
        pass
    os.kill(os_pid, signal.SIGKILL)
    otpy.send(parent, ("killed_at", time.monotonic()))


def session_recovery(n: int, replays: int = 10) -> dict:
    """A session with ``replays`` replay commands; its worker SIGKILLed; until
    its next command's result (replayed on the new worker first)."""
    pool = Pool.start_link(BenchWorker, size=2)
    samples = []
    try:
        for i in range(n):
            session = f"s{i}"
            for k in range(replays):
                pool.execute("remember", k, k * k, session=session)
            worker = pool.worker_of(session)
            ref = otpy.monitor(worker)
            t = _ns()
            os.kill(worker.os_pid, signal.SIGKILL)
            lowlevel.await_down(ref, 10)
            assert pool.execute("recall", replays - 1, session=session) == (replays - 1) ** 2
            samples.append(_ns() - t)
            wait_whole(pool, 2)
        return summarize(samples, 1e6)
    finally:
        pool.stop()


def command_timeout_late(n: int, timeout: float = 0.05) -> dict:
    """A session command that runs past its ``timeout``: how long after its
    deadline the caller gets CommandTimeout, in ms (the goal: p99 within
    20 ms on a quiet machine). The worker is killed and replaced each time."""
    pool = Pool.start_link(BenchWorker, size=2)
    late = []
    try:
        for i in range(n):
            session = f"late{i}"
            pool.execute("noop", session=session)  # bound first: only the command is timed
            t = time.monotonic()
            try:
                pool.execute("spin", 30.0, session=session, timeout=timeout)
                raise AssertionError("the command outlived its timeout")
            except CommandTimeout:
                late.append(time.monotonic() - t - timeout)
            pool.end_session(session)
            wait_whole(pool, 2)
        return summarize([max(0, int(x * 1e9)) for x in late], 1e6)
    finally:
        pool.stop()


def protection(quick: bool) -> dict:
    """The breaker's closed path beside pybreaker's; a limiter hit from two
    processes beside ``limits``' in-memory hit in one (see bench.protect)."""
    from . import protect as _bench_protect

    if importlib.util.find_spec("pybreaker") is None:
        raise Skipped("pybreaker is not installed: pip install -e '.[bench]'")
    breaker = _bench_protect.breaker_closed_overhead(20_000 if quick else 200_000)
    limiter = _bench_protect.limiter_hit_p50(2, 500 if quick else 5_000)
    out = {"breaker_overhead_ns": round(breaker["otpy_overhead_us"] * 1000, 1),
           "pybreaker_overhead_ns": round(breaker["pybreaker_overhead_us"] * 1000, 1),
           "limiter_hit_us": limiter["otpy_p50_us"]}
    if "limits_memory_p50_us" in limiter:
        out["limits_hit_us"] = limiter["limits_memory_p50_us"]
    return out


def throughput_by_workers(sizes: tuple[int, ...], total: int) -> dict:
    """Session-command throughput with 8 callers (pipelined), by pool size: sizing a pool."""
    return {f"workers_{n}": pool_burst(total, callers=8, size=n) for n in sizes}


def sessions_growth(counts: tuple[int, ...], n: int) -> dict:
    """The pool server's memory (USS, KiB) and execute p50 (µs) with many bound sessions."""
    import psutil

    out = {}
    pool = Pool.start_link(BenchWorker, size=2)
    try:
        bound = 0
        server = lowlevel.resolve(pool.name)
        for count in counts:
            while bound < count:
                pool.execute("noop", session=f"g{bound}")
                bound += 1
            samples = []
            for i in range(n):
                t = _ns()
                pool.execute("noop", session=f"g{i % count}")
                samples.append(_ns() - t)
            uss = psutil.Process(server.os_pid).memory_full_info().uss
            out[f"sessions_{count}"] = {"server_uss_kib": uss // 1024,
                                        "execute_p50_us": summarize(samples, 1e3)["p50"]}
        return out
    finally:
        pool.stop()


def idle_worker_memory() -> dict:
    """Unique memory (USS, KiB) of an idle worker: ours beside a multiprocessing.Pool worker's."""
    import multiprocessing

    import psutil

    pool = Pool.start_link(BenchWorker, size=2)
    try:
        ours = [psutil.Process(w.os_pid).memory_full_info().uss for w in pool.workers()]
    finally:
        pool.stop()
    mp = multiprocessing.get_context("fork").Pool(2)
    try:
        mp.apply(_peers.noop, (1,))
        theirs = [c.memory_full_info().uss for c in psutil.Process().children()
                  if c.pid in {p.pid for p in mp._pool}]  # noqa: SLF001 - its worker pids
    finally:
        mp.close()
        mp.join()
    return {"otpy_pool_kib": max(ours) // 1024, "mp_pool_kib": max(theirs) // 1024}


# ---- plan, report --------------------------------------------------------------

def plan(quick: bool, peers: bool) -> list[Case]:
    rtt_n, rtt_w = (300, 50) if quick else (5000, 500)
    burst = 2000 if quick else 20000
    crash_n = 5 if quick else 30
    cases: list[Case] = [
        ("call_rtt_us", lambda: call_rtt(rtt_n, rtt_w)),
        ("pool_execute_us", lambda: pool_execute(rtt_n, rtt_w, "bench")),
        ("pool_execute_stateless_us", lambda: pool_execute(rtt_n, rtt_w, None)),
        ("scrape", lambda: scraped_execute(2 if quick else 10, rtt_w, BenchWorker)),
    ]
    for peer in _peers.PEERS:
        cases.append((f"{peer.name}_apply_us", _peer_case(peer, _peers.round_trip_us, rtt_n,
                                                          rtt_w)))
    cases += [  # ProcessPoolExecutor's: beside the standard library's, loky's, pebble's
        ("executor_submit_result_us", lambda: _executor.submit_result_us(rtt_n, rtt_w)),
        ("executor_map_chunked_per_s", _executor.ours_map_chunked_per_s),
        ("process_pool_executor_map_chunked_per_s", _executor.ppe_map_chunked_per_s),
    ]
    cases += [("pool_burst_per_s", lambda: pool_burst(burst)),
              ("pool_burst_sync_per_s", lambda: pool_burst(burst, pipelined=False)),
              ("asyncio", lambda: async_calls(rtt_n, rtt_w, burst))]  # here: see aio.py
    for peer in _peers.PEERS:
        cases.append((f"{peer.name}_burst_per_s", _peer_case(peer, _peers.burst_per_s, burst)))
    cases += [
        ("worker_crash", lambda: worker_crash(crash_n)),
        ("session_recovery_ms", lambda: session_recovery(crash_n)),
        ("command_timeout_late_ms", lambda: command_timeout_late(crash_n * 2)),
        ("protection", lambda: protection(quick)),
        ("chaos_kill_60pct", lambda: chaos_kill(calls=100 if quick else 1000)),
        ("growth_throughput_per_s", lambda: throughput_by_workers(
            (1, 2) if quick else (1, 2, 4, 8), burst)),
        ("growth_sessions", lambda: sessions_growth(
            (10, 1000) if quick else (10, 1000, 100_000), 200 if quick else 2000)),
        ("idle_worker_memory", idle_worker_memory), ("ray", lambda: ray_calls(rtt_n, rtt_w)),
        ("async_worker_concurrency", lambda: async_worker_concurrency(3 if quick else 9)),
    ]
    if peers:
        for peer in _peers.PEERS:
            cases.append((f"{peer.name}_worker_kill", _peer_case(peer, _peers.kill_busy_worker)))
    return cases


def _peer_case(peer: _peers.Peer, fn: Callable, *args: Any) -> Callable[[], Any]:
    def case() -> Any:
        if not peer.available():
            raise Skipped(f"{peer.module} is not installed: pip install -e '.[bench]'")
        return fn(peer, *args)
    return case


def run(quick: bool, peers: bool, progress: Any = sys.stderr) -> dict[str, Any]:
    return run_cases(plan(quick, peers), {**RATIOS, **RATES}, quick, progress, _result_keys)


def _result_keys(key: str, value: Any) -> dict[str, Any]:
    """The cases that measure several figures give each its own result key."""
    if key == "worker_crash":
        return {"worker_crash_error_ms": value["error"], "worker_replaced_ms": value["replaced"]}
    if key in ("protection", "ray", "asyncio", "scrape"):
        return value
    return {key: value}


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report with every ratio "lower is better": rate ratios are inverted."""
    ratios = dict(report["ratios"])
    for name in RATES:
        if ratios.get(name):
            ratios[name] = round(1 / ratios[name], 3)
    return {**report, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    peers = {"action": "store_true",
             "help": "also SIGKILL a busy worker of each peer (takes ~40 s)"}
    return cli("python -m otpy_pool.bench", __doc__, lambda args: run(args.quick, args.peers),
               argv, options={"--peers": peers}, comparable=comparable)
