"""A pool's options, checked before anything starts, and what ``status()``
and ``subscribe()`` return."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple, Optional

from . import _checks
from ._worker import Worker

STRATEGIES = ("lifo", "fifo")


# ---- the rules: each takes the value and the option's name, returns the value kept -------------
# (TypeError or ValueError naming the option otherwise), by otpy_pool's one
# checks module: seconds follow lowlevel.check_timeout (None or math.inf is
# no limit, kept as None), a count is an int and never a bool.

seconds = _checks.seconds


def _count(minimum: int, none_ok: bool = False) -> Callable[[Any, str], int | None]:
    """An int >= ``minimum`` (or None, if ``none_ok``)."""
    return functools.partial(_checks.count, minimum=minimum, none_ok=none_ok)


def _size(value: Any, name: str) -> int | None:
    """None: the machine's cores."""
    return _checks.count((os.cpu_count() or 1) if value is None else value, name, minimum=1)


def _strategy(value: Any, name: str) -> str:
    return _checks.choice(value, name, STRATEGIES)


def _backoff(value: Any, name: str) -> tuple[float, float]:
    """(first delay, cap): finite seconds, 0 < first <= cap."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be (first delay, cap) in seconds, not {value!r}")
    first, cap = (_checks.finite_seconds(v, f"{name} {what}")
                  for v, what in zip(value, ("first delay", "cap")))
    if cap < first:
        raise ValueError(f"{name} cap must be >= its first delay, not {value!r}")
    return (first, cap)


def _placement(value: Any, name: str) -> Any:
    """None (local processes) or a placement: what makes the Worker class the
    pool runs (``worker_class``), such as RayPlacement."""
    if value is not None and not callable(getattr(value, "worker_class", None)):
        raise TypeError(f"{name} must be a RayPlacement or None, not {value!r}")
    return value


class Option(NamedTuple):
    """One pool option: its default, its type once checked, and its rule."""

    name: str
    default: Any
    type: Any
    check: Callable[[Any, str], Any]  # (value, name) -> the value kept
    doc: str


#: Every option of ``Pool.start_link`` and ``Pool.child_spec``, stated once:
#: ``start_link``'s keyword signature repeats them for users and type checkers
#: (tests/unit/test_pool_options.py holds it to this table), ``child_spec``
#: and ``Options`` are derived from it. docs/pool.md's table says the same.
OPTIONS: tuple[Option, ...] = (
    Option("size", None, int, _size, "workers kept running (None: the machine's cores)"),
    Option("max_overflow", 0, int, _count(0),
           "extra workers started when none is free, stopped after overflow_idle s idle"),
    Option("overflow_idle", 10.0, Optional[float], seconds, "see max_overflow"),
    Option("lazy", False, bool, _checks.flag, "start workers on first demand"),
    Option("strategy", "lifo", str, _strategy, "which idle worker serves next"),
    Option("checkout_timeout", 5.0, Optional[float], seconds,
           "longest wait for a free worker (PoolTimeout)"),
    Option("max_queue", None, Optional[int], _count(0, none_ok=True),
           "callers waiting at once; beyond it PoolOverloaded at once"),
    Option("command_timeout", None, Optional[float], seconds, "a command's longest run"),
    Option("health_interval", None, Optional[float], seconds,
           "run health_check on each idle worker every interval"),
    Option("health_timeout", 5.0, Optional[float], seconds,
           "a health check with no answer by then replaces the worker"),
    Option("max_commands", None, Optional[int], _count(1, none_ok=True),
           "a worker that ran this many commands is replaced when idle"),
    Option("max_memory", None, Optional[int], _count(1, none_ok=True),
           "bytes of RSS after a command past which the worker is replaced when idle"),
    Option("restart_backoff", (0.1, 30.0), tuple, _backoff,
           "(first delay, cap) of the retries of a worker that fails to start"),
    Option("placement", None, Any, _placement,
           "where workers run: None, local processes; RayPlacement(...), Ray actors"),
    Option("max_concurrency", None, Optional[int], _count(1, none_ok=True),
           "commands one async worker runs at once, and checkouts it takes "
           "(None: the Worker class's max_concurrency)"),
)
DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}

#: A pool's options, checked: the worker class and its arguments, the pool's
#: name, every entry of OPTIONS, and the worker class's own two timeouts.
Options = dataclasses.make_dataclass("Options", [
    ("worker", type), ("args", tuple), ("kwargs", dict), ("name", str),
    *((option.name, option.type) for option in OPTIONS),
    ("init_timeout", Optional[float]), ("shutdown_timeout", Optional[float]),
], frozen=True)
Options.__module__ = __name__  # pickled by reference, as a class defined here would be


def make_options(worker: Any, args: Any, kwargs: Any, name: str, **options: Any) -> Any:
    """Every option checked (``options``: by name, the missing ones default);
    a TypeError or ValueError names the bad one. Returns an Options."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown pool option(s): {', '.join(sorted(unknown))}")
    if not (isinstance(worker, type) and issubclass(worker, Worker)):
        raise TypeError(f"worker must be a Worker subclass, not {worker!r}")
    checked = {o.name: o.check(options.get(o.name, o.default), o.name) for o in OPTIONS}
    checked["max_concurrency"] = _concurrency(worker, checked["max_concurrency"])
    if checked["placement"] is not None:  # the pool runs the placement's stand-in
        worker = checked["placement"].worker_class(worker, checked["max_concurrency"])
    init_timeout = seconds(worker.init_timeout, f"{worker.__qualname__}.init_timeout")
    shutdown_timeout = seconds(  # 0: killed at once, as "brutal_kill"
        worker.shutdown_timeout, f"{worker.__qualname__}.shutdown_timeout", zero=True)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple, not {args!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict, not {kwargs!r}")
    return Options(worker, tuple(args), dict(kwargs), name, **checked,
                   init_timeout=init_timeout, shutdown_timeout=shutdown_timeout)


def _concurrency(worker: type[Worker], value: int | None) -> int:
    """The pool's max_concurrency, else the class's; above 1 only for a
    class that runs an event loop (``async def`` commands)."""
    if value is None:
        value = _checks.count(worker.max_concurrency, f"{worker.__qualname__}.max_concurrency",
                              minimum=1)
    _checks.finite_seconds(worker.cancel_grace, f"{worker.__qualname__}.cancel_grace", zero=True)
    if value > 1 and not worker.is_async():
        raise ValueError(f"max_concurrency={value}: {worker.__qualname__} has no async def "
                         "command, so it runs one command at a time")
    return value


class Settings(NamedTuple):
    """What a handle needs of its pool, asked once per process (SETTINGS)."""

    command_timeout: float | None
    checkout_timeout: float | None
    supervisor: Any  # the pool's supervisor: what stop() stops
    capacity: int  # size + max_overflow: the workers that can serve at once
    #: an async worker's grace for a command it cancelled at its deadline (a
    #: caller waits that much longer for its answer); None: a sync worker,
    #: killed at the deadline
    cancel_grace: float | None = None


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
    #: each live worker's commands running now (a sync worker's 0 or 1; an
    #: async worker's up to its max_concurrency), by pid; live detail, so
    #: not compared when two statuses are
    in_flight: dict = dataclasses.field(default_factory=dict, compare=False)


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
