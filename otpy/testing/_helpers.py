"""Deterministic waiting for tests: wait on an event with a deadline, never
on time.

- ``wait_down(pid)`` and ``synchronize(...)`` wait on messages (a Down, a
  "ready"), so they return the moment the event happens.
- ``wait_for(predicate)`` and ``wait_registered(name)`` are for conditions
  with no event to wait on: they re-check with a short backoff (1 ms,
  doubling up to 50 ms). Checking a name is cheap: the runtime caches names
  and asks the zygote only after some name changed.

Every one of them has a deadline and raises ``otpy.Timeout`` saying what it
was waiting for.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Mapping

from .. import (Down, Exited, OtpyError, Pid, Ref, SerializationError, Timeout, demonitor,
                exit, make_ref, monitor, receive, send, spawn_monitor, whereis)
from .. import self as otpy_self
from .. import lowlevel

_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.05


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """The first truthy value ``predicate()`` returns.

    Re-checks with a short backoff; raises Timeout naming the predicate and
    its last value after ``timeout`` seconds (None or ``math.inf``: no
    limit). Prefer an event when one exists (``wait_down``, a message): this
    is for state with no event.
    """
    if not callable(predicate):
        raise TypeError(f"wait_for needs a callable predicate, not {type(predicate).__name__}")
    deadline = _deadline(timeout, "wait_for timeout")
    pause = _FIRST_PAUSE
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"wait_for({_describe(predicate)}) timed out after {timeout}s; "
                          f"last value: {value!r}")
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _MAX_PAUSE)


def wait_down(target: Pid | Ref, timeout: float = 5.0) -> Any:
    """Wait until a process has exited; its exit reason.

    ``target`` is a Pid, or the Ref of a monitor you set up before causing
    the death (a Pid already gone gives "noproc": monitor first when the
    reason matters). Raises Timeout if it is still alive after ``timeout``.
    """
    timeout = lowlevel.check_timeout(timeout, "wait_down timeout")
    if isinstance(target, Ref):
        ref, what = target, f"the process monitored by {target!r}"
    elif isinstance(target, Pid):
        ref, what = monitor(target), repr(target)
    else:
        raise TypeError(f"wait_down needs a Pid or a monitor Ref, not {type(target).__name__}")
    try:
        return lowlevel.await_down(ref, timeout)
    except Timeout:
        if ref is not target:
            demonitor(ref, flush=True)
        raise Timeout(f"{what} was still alive after {timeout}s") from None


def wait_registered(name: str, timeout: float = 5.0) -> Pid:
    """Wait until ``name`` is registered (in the caller's namespace); its pid."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"wait_registered needs a non-empty str name, not {name!r}")
    try:
        return wait_for(lambda: whereis(name), timeout)
    except Timeout:
        raise Timeout(f"no process registered {name!r} within {timeout}s") from None


# ---- synchronize ------------------------------------------------------------------

_READY, _GO, _DONE = "$sync_ready", "$sync_go", "$sync_done"


def synchronize(operations: Mapping[Any, Callable[[], Any]], timeout: float = 10.0,
                in_processes: bool = True) -> dict[Any, Any]:
    """Run every operation at the same moment; ``{name: result}``.

    Each runs in its own otpy process (or thread, ``in_processes=False``).
    All are held at a barrier until every one is ready, then released
    together: each process waits for a "go" message sent once all have said
    they are ready. An operation that raises has the exception as its
    result (one that dies has ``otpy.Exited``). After ``timeout`` seconds in
    all, the operations not finished are killed (threads cannot be: they are
    abandoned) and Timeout names them.
    """
    if not isinstance(operations, Mapping) or not operations:
        raise TypeError("synchronize needs a non-empty mapping of name -> callable")
    for name, fn in operations.items():
        if not callable(fn):
            raise TypeError(f"synchronize: operation {name!r} is not callable")
    _deadline(timeout, "synchronize timeout")  # checked before anything starts
    if in_processes:
        return _in_processes(dict(operations), timeout)
    return _in_threads(dict(operations), timeout)


def _operation(coordinator: Pid, token: Any, name: str, fn: Callable[[], Any]) -> None:
    """Body of one synchronized process: ready, wait for go, run, report."""
    send(coordinator, (_READY, token, name))
    receive(match=lambda m: m == (_GO, token))
    try:
        outcome = ("ok", fn())
    except Exception as exc:
        outcome = ("raised", exc)
    try:
        send(coordinator, (_DONE, token, name, outcome))
    except SerializationError as exc:
        send(coordinator, (_DONE, token, name, ("raised", exc)))


def _in_processes(operations: dict[Any, Callable[[], Any]], timeout: float) -> dict[Any, Any]:
    deadline = _deadline(timeout, "synchronize timeout")
    me = otpy_self()
    token = make_ref()
    procs: dict[str, tuple[Pid, Any]] = {}
    for name, fn in operations.items():
        procs[name] = spawn_monitor(_operation, me, token, name, fn)
    by_ref = {ref: name for name, (_pid, ref) in procs.items()}
    results: dict[str, Any] = {}
    ready: set[str] = set()

    def ours(m: Any) -> bool:
        return (type(m) is tuple and len(m) >= 3 and m[0] in (_READY, _DONE) and m[1] == token) \
            or (type(m) is Down and m.ref in by_ref)

    def collect(pending: Callable[[], set[str]]) -> None:
        while pending():
            remaining = deadline - time.monotonic()
            try:
                m = receive(timeout=max(0.0, remaining), match=ours)  # (inf: no limit)
            except Timeout:
                late = sorted(pending())
                _kill_all(by_ref, procs)  # the ones held at the barrier too
                raise Timeout(f"synchronize timed out after {timeout}s waiting for "
                              f"{late} (killed)") from None
            if type(m) is Down:
                name = by_ref.pop(m.ref)
                ready.add(name)
                results.setdefault(name, Exited(m.reason, m.pid))
            elif m[0] == _READY:
                ready.add(m[2])
            else:
                results[m[2]] = m[3][1]

    try:
        collect(lambda: set(operations) - ready)
        for name in operations:
            send(procs[name][0], (_GO, token))
        collect(lambda: {n for n in operations if n not in results or _alive(n, by_ref)})
    finally:
        for ref in list(by_ref):
            demonitor(ref, flush=True)
        lowlevel.flush(lambda m: type(m) is tuple and len(m) >= 2 and m[0] in (_READY, _DONE)
                       and m[1] == token)
    return {name: results[name] for name in operations}


def _alive(name: str, by_ref: dict) -> bool:
    """Still waiting for this operation's Down (its result is in: it is exiting)."""
    return name in by_ref.values()


def _kill_all(by_ref: dict, procs: dict) -> None:
    """Kill every operation process not yet seen exiting, and wait for each."""
    for ref in list(by_ref):
        exit(procs[by_ref[ref]][0], "kill")
    for ref in list(by_ref):
        lowlevel.await_down(ref, 60)
        del by_ref[ref]


def _in_threads(operations: dict[Any, Callable[[], Any]], timeout: float) -> dict[Any, Any]:
    deadline = _deadline(timeout, "synchronize timeout")
    barrier = threading.Barrier(len(operations))
    results: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(_wait_seconds(deadline))
        except threading.BrokenBarrierError:
            return
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = exc

    threads = {name: threading.Thread(target=run, args=(name, fn), daemon=True,
                                      name=f"otpy-sync-{name}")
               for name, fn in operations.items()}
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(_wait_seconds(deadline))
    stragglers = sorted(name for name, t in threads.items() if t.is_alive() or name not in results)
    if stragglers:
        barrier.abort()
        raise Timeout(f"synchronize timed out after {timeout}s waiting for {stragglers} "
                      "(threads cannot be killed: abandoned)")
    return {name: results[name] for name in operations}


# ---- pools (any object with the pool's interface: otpy.testing does not import otpy_pool) ----

POOL_EVENT_FIELDS = ("kind", "worker", "session", "detail", "time")


def is_pool_event(message: Any) -> bool:
    """A pool's event message (a named tuple with the PoolEvent fields)."""
    return (isinstance(message, tuple)
            and getattr(type(message), "_fields", None) == POOL_EVENT_FIELDS)


def wait_event(pool: Any, kind: str, timeout: float = 5.0,
               match: Callable[[Any], bool] | None = None) -> Any:
    """The next event ``kind`` of ``pool`` (for which ``match(event)`` is true).

    Subscribes the caller to the pool's events (idempotent), so call it, or
    ``pool.subscribe()``, *before* causing the event: events already queued
    count, events from before the first subscription were never sent. Other
    events stay queued. Raises Timeout naming the kind.
    """
    if not isinstance(kind, str):
        raise TypeError(f"wait_event needs an event kind (str), not {kind!r}")
    timeout = lowlevel.check_timeout(timeout, "wait_event timeout")
    pool.subscribe()

    def wanted(m: Any) -> bool:
        return is_pool_event(m) and m.kind == kind and (match is None or bool(match(m)))

    try:
        return receive(timeout=timeout, match=wanted)
    except Timeout:
        raise Timeout(f"no {kind!r} event from {pool!r} within {timeout}s") from None


def ensure_pool_ready(pool: Any, min_workers: int = 1, timeout: float = 10.0) -> Any:
    """Wait until ``pool`` answers and has at least ``min_workers`` workers
    alive; its status. A pool whose server is being restarted counts as not
    ready yet (its errors are retried until the deadline)."""
    if not isinstance(min_workers, int) or isinstance(min_workers, bool) or min_workers < 0:
        raise ValueError(f"min_workers must be an int >= 0, not {min_workers!r}")
    _deadline(timeout, "ensure_pool_ready timeout")
    last: list[Any] = [None]

    def ready() -> Any:
        try:
            status = pool.status()
        except OtpyError as exc:
            last[0] = exc
            return None
        last[0] = status
        return status if status.workers >= min_workers else None

    try:
        return wait_for(ready, timeout)
    except Timeout:
        raise Timeout(f"{pool!r} did not have {min_workers} worker(s) within {timeout}s; "
                      f"last: {last[0]!r}") from None


def _deadline(timeout: Any, what: str) -> float:
    """The monotonic time ``timeout`` ends at (``math.inf``: no limit)."""
    seconds = lowlevel.check_timeout(timeout, what)
    return math.inf if seconds is None else time.monotonic() + seconds


def _wait_seconds(deadline: float) -> float | None:
    """What is left until ``deadline``, for a wait that takes None as "no limit"."""
    return None if deadline == math.inf else max(0.0, deadline - time.monotonic())


def _describe(predicate: Callable[[], Any]) -> str:
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    code = getattr(predicate, "__code__", None)
    if code is not None and name.endswith("<lambda>"):
        return f"{name} at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"
    return name
