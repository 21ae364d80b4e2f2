"""Chaos and load against a pool (or an isolated tree): real faults, real load.

Everything here works on any object with the pool's interface: ``workers()``
(live worker pids), ``status()`` (with ``workers``, ``errors``,
``worker_restarts``, ``sessions_recovered``), ``execute(command, *args,
session=...)``, ``subscribe()`` / ``unsubscribe()`` (event messages with the
fields kind, worker, session, detail, time). ``otpy.testing`` does not import
``otpy_pool``.

- scenarios: :func:`cascade_failure`, :func:`kill_fraction`,
  :func:`thundering_herd`, :func:`slow_worker`, :func:`memory_leak`,
  :func:`corrupt_messages`;
- :class:`ChaosMonkey`: random faults on a schedule, reproducible by seed;
- :func:`run_load` -> :class:`LoadReport`: N client processes for a while;
- :func:`pool_monitor`: a process collecting the pool's events -> stats.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from .. import Down, Exited, NoProc, Pid, Timeout, exit, make_ref, receive, send, spawn_monitor
from .. import self as otpy_self
from .. import lowlevel
from ._helpers import is_pool_event, synchronize, wait_down
from ._inject import KINDS as FAULT_KINDS
from ._inject import Injection, inject_failure
from ._tree import Tree

DEADLINE = 30.0  # for a process of ours to answer: a deadline, never a pause


# ---- scenarios ------------------------------------------------------------------------

def cascade_failure(pool: Any, workers: int = 3, interval: float = 0.1) -> list[Pid]:
    """SIGKILL ``workers`` workers one after another, ``interval`` seconds
    apart (each chosen among the workers alive at that moment); the pids killed."""
    _count("workers", workers)
    killed: list[Pid] = []
    gone: set[Pid] = set()
    for i in range(workers):
        if i:
            time.sleep(interval)  # the scenario's pacing, not a synchronization
        for pid in pool.workers():
            if pid not in killed and pid not in gone and _kill(pid):
                killed.append(pid)
                break
            gone.add(pid)
        else:
            break
    return killed


def _kill(pid: Pid) -> bool:
    """SIGKILL ``pid``; False if it was dead already. A pool lists a worker
    until its server has taken the Down, so a worker killed a moment ago (by
    an earlier scenario, say) may still be listed."""
    try:
        inject_failure("crash", pid)
    except NoProc:
        return False
    return True


def kill_fraction(pool: Any, fraction: float = 0.6) -> list[Pid]:
    """SIGKILL ``fraction`` of the pool's workers (rounded, at least one) at
    once; the pids killed (a listed worker found dead already is not)."""
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
    workers = pool.workers()
    victims = workers[:max(1, round(fraction * len(workers)))]
    return [pid for pid in victims if _kill(pid)]


def thundering_herd(pool: Any, requests: int, command: str, *args: Any,
                    timeout: float = 60.0) -> list[Any]:
    """``requests`` calls of ``command`` released at the same moment (threads
    behind a barrier); their results in request order, an exception as its
    result."""
    _count("requests", requests)
    ops = {i: (lambda: pool.execute(command, *args)) for i in range(requests)}
    results = synchronize(ops, timeout=timeout, in_processes=False)
    return [results[i] for i in range(requests)]


def slow_worker(pool: Any, delay: float, worker: Any = None, **opts: Any) -> Injection:
    """Make one worker (the first, or ``worker``) slow: each message costs ``delay``."""
    return inject_failure("slow", _worker(pool, worker), delay=delay, **opts)


def memory_leak(pool: Any, rate: float, worker: Any = None, **opts: Any) -> Injection:
    """Make one worker leak ``rate`` MB/s (``limit=`` caps it)."""
    return inject_failure("memory", _worker(pool, worker), rate=rate, **opts)


def corrupt_messages(pool: Any, count: int = 1, worker: Any = None, **opts: Any) -> Injection:
    """The next ``count`` messages to one worker arrive corrupted."""
    return inject_failure("corrupt", _worker(pool, worker), count=count, **opts)


def _worker(pool: Any, worker: Any) -> Pid:
    if worker is not None:
        return worker
    workers = pool.workers()
    if not workers:
        raise ValueError(f"{pool!r} has no worker to inject into")
    return workers[0]


def _count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


# ---- ChaosMonkey ------------------------------------------------------------------------

class ChaosMonkey:
    """Random faults on a schedule, against a pool's workers or an isolated
    tree's processes (never the tree's root supervisor, nor the caller).

    Every ``interval`` seconds it heals what it injected last, picks a kind
    among ``kinds`` and a target position among the candidates alive (sorted
    by pid), and injects it: a fault lasts one interval. ``.log`` lists ``(time,
    kind, target)``. The same seed gives the same sequence of kinds and
    target positions; the seed is added to any exception raised while it
    runs (``with monkey:`` or ``.run``), so a failing test shows it.
    """

    def __init__(self, target: Any, kinds: Sequence[str] = ("crash",), interval: float = 1.0,
                 seed: int | None = None, **fault_options: Any) -> None:
        kinds = tuple(kinds)
        if not kinds or any(k not in FAULT_KINDS for k in kinds):
            raise ValueError(f"kinds must be among {', '.join(FAULT_KINDS)}, not {kinds!r}")
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.target = target
        self.kinds = kinds
        self.interval = float(interval)
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.options = fault_options  # per kind: {"slow": {"delay": 0.05}, ...}
        self.log: list[tuple[float, str, Pid]] = []
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._injections: list[Injection] = []
        self._exclude = {otpy_self()}
        if isinstance(target, Tree):
            self._exclude.add(target.supervisor)

    def __repr__(self) -> str:
        return f"<ChaosMonkey seed={self.seed} kinds={self.kinds} interval={self.interval}>"

    def candidates(self) -> list[Pid]:
        if isinstance(self.target, Tree):
            pids = self.target.processes()
        else:
            pids = self.target.workers()
        return sorted((p for p in pids if p not in self._exclude), key=lambda p: p.serial)

    def step(self) -> tuple[float, str, Pid] | None:
        """One fault now, after healing the previous step's (so faults never
        pile up on one target: a hung process could not apply the next).
        Two draws per step whatever the candidates, so the sequence of kinds
        and positions depends on the seed only."""
        self.heal()
        kind = self.kinds[int(self._rng.random() * len(self.kinds))]
        position = self._rng.random()
        pids = self.candidates()
        if not pids:
            return None
        pid = pids[int(position * len(pids))]
        opts = dict(self.options.get(kind, {}))
        if kind == "slow":
            opts.setdefault("delay", 0.05)
        if kind == "memory":
            opts.setdefault("megabytes", 32)
        try:
            injection = inject_failure(
                kind, pid, tree=self.target if isinstance(self.target, Tree) else None, **opts)
        except (Exited, lowlevel.FaultError, Timeout):
            return None  # it died meanwhile, or cannot apply it now: chaos goes on
        self._injections.append(injection)
        entry = (time.monotonic(), kind, pid)
        self.log.append(entry)
        return entry

    def run(self, duration: float) -> list[tuple[float, str, Pid]]:
        """Inject faults for ``duration`` seconds (blocking); the log."""
        try:
            self._loop(time.monotonic() + duration)
        except BaseException as exc:
            exc.add_note(f"ChaosMonkey seed={self.seed}")
            raise
        finally:
            self.heal()
        return self.log

    def heal(self) -> None:
        """Undo every fault still active (what ``duration`` has not healed yet)."""
        while self._injections:
            self._injections.pop().heal()

    def _loop(self, until: float | None) -> None:
        while not self._stop.is_set():
            if until is not None and time.monotonic() >= until:
                return
            self.step()
            wait = self.interval if until is None else min(self.interval, until - time.monotonic())
            if self._stop.wait(max(0.0, wait)):
                return

    def __enter__(self) -> ChaosMonkey:
        def background() -> None:
            try:
                self._loop(None)
            except BaseException as exc:  # shown when the with block ends
                self._error = exc

        self._stop.clear()
        self._thread = threading.Thread(target=background, name="otpy-chaos-monkey", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DEADLINE)
        self.heal()
        failure = exc if exc is not None else self._error
        if failure is not None:
            failure.add_note(f"ChaosMonkey seed={self.seed}")
            print(f"ChaosMonkey seed={self.seed}", file=sys.stderr)
        if exc is None and self._error is not None:
            raise self._error


# ---- run_load --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load run measured (latencies in seconds)."""

    operations: int
    throughput: float  # operations per second
    avg: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    error_rate: float  # 0..1
    errors: dict[str, int]  # error class name -> count
    recovered: int  # sessions the pool recovered during the run
    duration: float


def _client(coordinator: Pid, token: Any, pool: Any, commands: list, weights: list,
            session: Any, duration: float, interval: float | None, start_delay: float,
            seed: int) -> None:
    """One load client: runs operations until its deadline, then reports."""
    rng = random.Random(seed)
    send(coordinator, ("$load_ready", token))
    receive(match=lambda m: m == ("$load_go", token))
    started = time.monotonic()
    if start_delay:
        time.sleep(start_delay)  # the ramp: this client joins later
    end = started + duration
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if interval is not None:
            if next_at > now:
                time.sleep(min(next_at - now, end - now))  # the requested rate
                continue
            next_at += interval
        command, args = rng.choices(commands, weights)[0]
        t0 = time.monotonic()
        try:
            if session is None:
                pool.execute(command, *args)
            else:
                pool.execute(command, *args, session=session)
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        latencies.append(time.monotonic() - t0)
    send(coordinator, ("$load_done", token, latencies, errors))


def run_load(pool: Any, clients: int = 50, duration: float = 5.0, rate: float | None = None,
             ramp: float | None = None, mix: Mapping[str, Any] | None = None,
             session_of: Callable[[int], Any] | None = None, timeout: float | None = None,
             seed: int = 0) -> LoadReport:
    """Load ``pool`` with ``clients`` otpy processes for ``duration`` seconds.

    ``mix``: command -> weight, or command -> (weight, args) (default:
    {"ping": 1}); ``rate``: total operations per second (default: as fast as
    each client can); ``ramp``: seconds over which clients join (linearly);
    ``session_of(i)``: client i's session (default None: stateless
    commands). Latencies are measured in the clients, around each execute.
    """
    _count("clients", clients)
    if not isinstance(duration, (int, float)) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, not {duration!r}")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise ValueError(f"rate must be a positive number of operations per second, not {rate!r}")
    if ramp is not None and (not isinstance(ramp, (int, float)) or not 0 <= ramp < duration):
        raise ValueError(f"ramp must be seconds in [0, duration), not {ramp!r}")
    commands, weights = _mix(mix if mix is not None else {"ping": 1})
    interval = None if rate is None else clients / rate
    before = pool.status()
    token = make_ref()
    me = otpy_self()
    procs = {}
    for i in range(clients):
        start_delay = 0.0 if not ramp else ramp * i / clients
        session = session_of(i) if session_of is not None else None
        pid, ref = spawn_monitor(_client, me, token, pool, commands, weights, session,
                                 float(duration), interval, start_delay, seed + i)
        procs[ref] = pid
    deadline = time.monotonic() + (timeout if timeout is not None else duration + 60.0)
    downs: set = set()  # monitors whose Down was already taken
    try:
        _gather(token, "$load_ready", len(procs), procs, deadline, downs)
        for pid in procs.values():
            send(pid, ("$load_go", token))
        started = time.monotonic()
        reports = _gather(token, "$load_done", len(procs), procs, deadline, downs)
        elapsed = time.monotonic() - started
    finally:
        for ref, pid in procs.items():
            if ref not in downs:
                exit(pid, "kill")  # done already, normally: this only stops stragglers
        for ref in procs:
            if ref not in downs:
                lowlevel.await_down(ref, DEADLINE)
        lowlevel.flush(lambda m: type(m) is tuple and len(m) >= 2 and m[1] == token)
    after = pool.status()
    latencies = sorted(x for r in reports for x in r[2])
    errors: dict[str, int] = {}
    for r in reports:
        for name, n in r[3].items():
            errors[name] = errors.get(name, 0) + n
    n = len(latencies)
    return LoadReport(
        operations=n, throughput=n / elapsed if elapsed > 0 else 0.0,
        avg=sum(latencies) / n if n else 0.0, p50=_pct(latencies, 50), p90=_pct(latencies, 90),
        p95=_pct(latencies, 95), p99=_pct(latencies, 99), max=latencies[-1] if n else 0.0,
        error_rate=sum(errors.values()) / n if n else 0.0, errors=errors,
        recovered=after.sessions_recovered - before.sessions_recovered, duration=elapsed)


def _mix(mix: Mapping[str, Any]) -> tuple[list, list]:
    if not isinstance(mix, Mapping) or not mix:
        raise ValueError("mix must be a non-empty mapping command -> weight or (weight, args)")
    commands, weights = [], []
    for command, spec in mix.items():
        weight, args = (spec, ()) if not isinstance(spec, tuple) else spec
        if not isinstance(weight, (int, float)) or weight <= 0:
            raise ValueError(f"mix: the weight of {command!r} must be positive, not {weight!r}")
        commands.append((command, tuple(args)))
        weights.append(weight)
    return commands, weights


def _gather(token: Any, tag: str, count: int, procs: dict, deadline: float, downs: set) -> list:
    """``count`` messages ``(tag, token, ...)``; a client that dies first
    (not after reporting: its normal exit) is an error."""
    got: list[tuple] = []
    while len(got) < count:
        try:
            m = receive(timeout=max(0.0, deadline - time.monotonic()),
                        match=lambda m: (type(m) is tuple and len(m) >= 2 and m[0] == tag
                                         and m[1] == token)
                        or (type(m) is Down and m.ref in procs))
        except Timeout:
            raise Timeout(f"load clients did not report {tag!r} in time "
                          f"({len(got)}/{count})") from None
        if type(m) is Down:
            downs.add(m.ref)
            if m.reason != "normal":
                raise Exited(m.reason, procs[m.ref], f"a load client died: {m.reason!r}")
            continue
        got.append(m)
    return got


def _pct(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(len(sorted_values) * pct / 100))
    return sorted_values[index]


# ---- pool_monitor ---------------------------------------------------------------------------

def _monitor_body(coordinator: Pid, token: Any, pool: Any) -> None:
    """Subscribes to the pool's events and keeps what stats() reports."""
    pool.subscribe()
    base = pool.status()
    counts = {"checkouts": 0, "checkins": 0, "max_queue_depth": 0}
    held: dict[Any, float] = {}  # worker -> checkout time
    latencies: list[float] = []
    events = 0

    def take(m: Any) -> None:
        nonlocal events
        events += 1
        if m.kind == "checkout":
            counts["checkouts"] += 1
            held[m.worker] = m.time
        elif m.kind == "checkin":
            counts["checkins"] += 1
            t = held.pop(m.worker, None)
            if t is not None:
                latencies.append(m.time - t)
        elif m.kind in ("queued", "overloaded") and isinstance(m.detail, int):
            counts["max_queue_depth"] = max(counts["max_queue_depth"], m.detail)

    send(coordinator, ("$mon_ready", token))
    while True:
        m = receive()
        if is_pool_event(m):
            take(m)
        elif type(m) is tuple and len(m) == 3 and m[0] in ("$mon_stats", "$mon_stop") \
                and m[1] == token:
            status = pool.status()
            # The pool sent every event of what it handled before this status
            # ahead of its answer: they are queued now. Count them too (a
            # checkin cast just before the request would be missing otherwise).
            for queued in iter(_next_event, None):
                take(queued)
            ordered = sorted(latencies)
            stats = dict(counts, events=events,
                         errors=status.errors - base.errors,
                         worker_restarts=status.worker_restarts - base.worker_restarts,
                         sessions_recovered=status.sessions_recovered - base.sessions_recovered,
                         latency={"p50": _pct(ordered, 50), "p90": _pct(ordered, 90),
                                  "p99": _pct(ordered, 99)})
            send(m[2], ("$mon_answer", token, stats))
            if m[0] == "$mon_stop":
                pool.unsubscribe()
                return


def _next_event() -> Any:
    """A pool event already queued, or None."""
    try:
        return receive(timeout=0, match=is_pool_event)
    except Timeout:
        return None


class PoolMonitor:
    """What ``with pool_monitor(pool) as mon`` gives: ``mon.stats()``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.token = make_ref()
        self.pid: Pid | None = None
        self._ref: Any = None
        self._final: dict | None = None

    def start(self) -> PoolMonitor:
        self.pid, self._ref = spawn_monitor(_monitor_body, otpy_self(), self.token, self.pool)
        self._answer("$mon_ready")
        return self

    def stats(self) -> dict:
        """checkouts, checkins, errors, max_queue_depth, worker_restarts,
        sessions_recovered, events, and latency {p50, p90, p99} (seconds a
        worker was held, checkout to checkin), since the monitor started."""
        if self._final is not None:
            return self._final
        assert self.pid is not None, "the monitor is not started: use it in a with block"
        send(self.pid, ("$mon_stats", self.token, otpy_self()))
        return self._answer("$mon_answer")[2]

    def stop(self) -> dict:
        if self._final is None and self.pid is not None:
            send(self.pid, ("$mon_stop", self.token, otpy_self()))
            self._final = self._answer("$mon_answer")[2]
            wait_down(self._ref, DEADLINE)
            self._ref = None
        return self._final

    def _answer(self, tag: str) -> tuple:
        m = receive(timeout=DEADLINE, match=lambda m: (type(m) is tuple and len(m) >= 2
                                                        and m[0] == tag and m[1] == self.token)
                    or (type(m) is Down and m.ref == self._ref))
        if type(m) is Down:
            self._ref = None  # its Down is taken: nothing left to wait for
            raise Exited(m.reason, self.pid, f"the pool monitor died: {m.reason!r}")
        return m

    def __enter__(self) -> PoolMonitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        except BaseException:
            if self._ref is not None:
                exit(self.pid, "kill")
                lowlevel.await_down(self._ref, DEADLINE)
            raise


def pool_monitor(pool: Any) -> PoolMonitor:
    """``with pool_monitor(pool) as mon:`` collects the pool's events in a
    process of its own (so it never competes with the test for messages);
    ``mon.stats()`` at any time, final once the block ends."""
    return PoolMonitor(pool)


__all__ = ["ChaosMonkey", "LoadReport", "PoolMonitor", "cascade_failure", "corrupt_messages",
           "kill_fraction", "memory_leak", "pool_monitor", "run_load", "slow_worker",
           "thundering_herd"]
