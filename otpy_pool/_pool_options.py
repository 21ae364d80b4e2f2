"""A pool's options, checked before anything starts, and what ``status()``
and ``subscribe()`` return."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from otpy import lowlevel

from ._worker import Worker

STRATEGIES = ("lifo", "fifo")


@dataclasses.dataclass(frozen=True)
class Options:
    worker: type
    args: tuple
    kwargs: dict
    name: str
    size: int
    max_overflow: int
    overflow_idle: float | None  # None: never (as every None below: no limit)
    lazy: bool
    strategy: str
    checkout_timeout: float | None
    max_queue: int | None
    command_timeout: float | None
    health_interval: float | None
    health_timeout: float | None
    max_commands: int | None
    max_memory: int | None
    init_timeout: float | None  # the worker class's, checked
    shutdown_timeout: float | None  # the worker class's, checked
    restart_backoff: tuple[float, float]  # first delay and cap of start retries


def _int(name: str, value: Any, minimum: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int{' or None' if none_ok else ''}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")


def seconds(name: str, value: Any) -> float | None:
    """A pool's timeout, deadline or interval: > 0 seconds; None or ``math.inf``
    for no limit (returned as None). The rule of ``lowlevel.check_timeout``."""
    return lowlevel.check_timeout(value, name, zero=False)


def _backoff(value: Any) -> tuple[float, float]:
    """``restart_backoff``: (first delay, cap), finite seconds, 0 < first <= cap."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"restart_backoff must be (first delay, cap) in seconds, not {value!r}")
    first, cap = (lowlevel.check_timeout(v, f"restart_backoff {what}", forever=False, zero=False)
                  for v, what in zip(value, ("first delay", "cap")))
    assert first is not None and cap is not None  # forever=False refuses None
    if cap < first:
        raise ValueError(f"restart_backoff cap must be >= its first delay, not {value!r}")
    return (first, cap)


def make_options(worker: Any, args: Any, kwargs: Any, name: str, *, size: int | None,
                 max_overflow: int, overflow_idle: float, lazy: bool, strategy: str,
                 checkout_timeout: float, max_queue: int | None, command_timeout: float | None,
                 health_interval: float | None, health_timeout: float,
                 max_commands: int | None, max_memory: int | None,
                 restart_backoff: Any) -> Options:
    """Every option checked; a TypeError or ValueError names the bad one."""
    if not (isinstance(worker, type) and issubclass(worker, Worker)):
        raise TypeError(f"worker must be a Worker subclass, not {worker!r}")
    init_timeout = seconds(f"{worker.__qualname__}.init_timeout", worker.init_timeout)
    shutdown_timeout = lowlevel.check_timeout(  # 0: killed at once, as "brutal_kill"
        worker.shutdown_timeout, f"{worker.__qualname__}.shutdown_timeout")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple, not {args!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict, not {kwargs!r}")
    if size is None:
        size = os.cpu_count() or 1
    _int("size", size, 1)
    _int("max_overflow", max_overflow, 0)
    overflow_idle = seconds("overflow_idle", overflow_idle)
    if not isinstance(lazy, bool):
        raise TypeError(f"lazy must be a bool, not {lazy!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    checkout_timeout = seconds("checkout_timeout", checkout_timeout)
    _int("max_queue", max_queue, 0, none_ok=True)
    command_timeout = seconds("command_timeout", command_timeout)
    health_interval = seconds("health_interval", health_interval)
    health_timeout = seconds("health_timeout", health_timeout)
    _int("max_commands", max_commands, 1, none_ok=True)
    _int("max_memory", max_memory, 1, none_ok=True)
    restart_backoff = _backoff(restart_backoff)
    return Options(worker, tuple(args), dict(kwargs), name, size, max_overflow,
                   overflow_idle, lazy, strategy, checkout_timeout, max_queue,
                   command_timeout, health_interval, health_timeout, max_commands,
                   max_memory, init_timeout, shutdown_timeout, restart_backoff)


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    """A pool's state now and its counters since it started (see docs/pool.md)."""

    size: int  # as configured
    overflow: int  # overflow workers alive now
    idle: int  # workers not checked out
    busy: int  # workers checked out (a stateless execute, or checkout())
    queued: int  # callers waiting for a worker
    sessions: int  # sessions known to the pool
    total_commands: int  # commands that ran (or died, or timed out) on a worker
    errors: int  # commands that ended in an error
    timeouts: int  # PoolTimeout plus CommandTimeout
    worker_restarts: int  # replacements after an unplanned death or a deadline kill
    sessions_recovered: int  # sessions re-bound by a successful replay
    sessions_lost: int  # sessions whose replay failed
    workers: int  # workers alive now (overflow included)
    starting: int = 0  # regular workers owed: a start failed or is about to be retried
    degraded: bool = False  # below size because starting workers fails (retried, with backoff)


class PoolEvent(NamedTuple):
    """Sent to subscribers: ``kind`` is one of EVENT_KINDS; ``time`` is epoch seconds."""

    kind: str
    worker: Any
    session: Any
    detail: Any
    time: float


EVENT_KINDS = ("checkout", "checkin", "queued", "timeout", "worker_started", "worker_exited",
               "worker_start_failed", "session_bound", "session_recovered", "session_lost",
               "recycled", "health_failed", "overloaded")
