"""CircuitBreaker: one breaker state shared by every process of the node.

Who does what (see docs/breaker_and_limiter.md for the reasoning):

- ``start_link`` starts a supervisor of the breaker's own. Its child, the
  *owner* (``_breaker_owner``), runs the state machine and publishes the
  state into a shared page the supervisor holds (``_shared_owner``).
- A handle (``CircuitBreaker("db")``, picklable) maps the page once per
  process. A closed call reads one word, bumps this process's counter slot and
  runs: no message, no lock. A failure is a synchronous call to the owner, so
  the next read anywhere reflects it. Half-open trial slots are granted by the
  owner; trial outcomes go back to it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import random
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, TypeVar

import otpy
from otpy import ChildSpec, Pid
from otpy import lowlevel

from . import _checks as checks
from . import _shared_owner as owners
from ._breaker_owner import (C_CLOSED, C_DISABLED, C_OPEN, FAULT_SCALE, NAMES, RETIRED,
                             SLOT_BASE, W_FAULT, W_GATE, W_HALF_OPEN_AT, W_STATE, BreakerEvent,
                             BreakerOwner, slot_words)
from ._errors import BreakerNotRunning, BreakerTimeout, CircuitOpen
from ._io import arun, run
from ._shared_handle import DEFAULT_TIMEOUT, Handle
from ._shared_memory import Page
from ._shared_owner import OwnerLink

T = TypeVar("T")

__all__ = ["CircuitBreaker", "BreakerEvent", "check_options"]


# ---- options ------------------------------------------------------------------------------

def check_options(max_failures: int = 5, window: float = 10.0, reset_after: float = 30.0,
                  half_open_calls: int = 1, success_threshold: int = 1,
                  failure_on: Any = (Exception,), ignore: Any = (),
                  fault_rate: float = 0.0) -> dict[str, Any]:
    """The options, checked; ValueError/TypeError naming the bad one."""
    return {
        "max_failures": checks.count(max_failures, "max_failures", minimum=1),
        "window": checks.finite_seconds(window, "window"),
        "reset_after": checks.finite_seconds(reset_after, "reset_after"),
        "half_open_calls": checks.count(half_open_calls, "half_open_calls", minimum=1),
        "success_threshold": checks.count(success_threshold, "success_threshold", minimum=1),
        "failure_on": checks.exceptions(failure_on, "failure_on"),
        "ignore": checks.exceptions(ignore, "ignore"),
        "fault_rate": checks.ratio(fault_rate, "fault_rate"),
    }


# ---- this process's connection --------------------------------------------------------------

class _Connection:
    """This process's view of one breaker: its page mapping and counter slot."""

    __slots__ = ("words", "page", "successes", "rejected", "neither", "failure_on", "ignore",
                 "owner", "me", "tokens", "dead")

    def __init__(self, owner: OwnerLink, me: Pid, timeout: float) -> None:
        info = owner.ask(("attach", me), timeout)
        self.page = Page.open(*info["page"])
        self.words = self.page.words
        self.successes, self.rejected, self.neither = slot_words(info["slot"])
        self.failure_on = info["failure_on"]
        self.ignore = info["ignore"]
        self.owner = owner
        self.me = me
        self.tokens = itertools.count(1)  # next() is atomic under the GIL
        self.dead = False

    def retire(self) -> None:
        """Send every later use down the slow path, which reconnects: a fork
        must not write its parent's counter slot, nor anyone a stopped owner's."""
        self.dead = True
        self.words = _NOT_CONNECTED.words

    def close(self) -> None:
        """Nothing: a thread may still be reading the page (it goes with the process)."""


class _NotConnected:
    """What a handle holds until it connects: its gate word says "slow path"."""

    words = memoryview(bytearray(8 * SLOT_BASE)).cast("q")
    words[W_GATE] = 1
    dead = True


_NOT_CONNECTED: Any = _NotConnected()


# ---- the handle ---------------------------------------------------------------------------

class CircuitBreaker(Handle):
    """A handle on the breaker registered as ``name``: picklable, usable from
    any process and thread of the node. ``namespace`` defaults to the
    caller's (an isolated tree's, in tests); ``timeout`` bounds each call to
    the owner, a restart waited out included (None or ``math.inf``: no limit)."""

    __slots__ = ("_local", "_tasks")

    KIND = "circuit breaker"
    NOT_RUNNING = BreakerNotRunning
    TIMED_OUT = BreakerTimeout
    NOT_CONNECTED = _NOT_CONNECTED

    def __init__(self, name: str, *, namespace: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__(name, namespace=namespace, timeout=timeout)
        self._local: threading.local | None = None
        self._tasks: weakref.WeakKeyDictionary | None = None  # asyncio task -> its admissions

    # ---- starting ------------------------------------------------------------------------

    @classmethod
    def start_link(cls, name: str, *, max_failures: int = 5, window: float = 10.0,
                   reset_after: float = 30.0, half_open_calls: int = 1,
                   success_threshold: int = 1,
                   failure_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
                   ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
                   fault_rate: float = 0.0) -> "CircuitBreaker":
        """Start the breaker's supervisor (linked to the caller) and owner; a handle.

        ``max_failures`` failures within ``window`` seconds open it; after
        ``reset_after`` seconds it lets ``half_open_calls`` trial calls through;
        ``success_threshold`` successes close it. See the module docs.
        """
        options = check_options(max_failures, window, reset_after, half_open_calls,
                                success_threshold, failure_on, ignore, fault_rate)
        owners.start(BreakerOwner, checks.name(name), options)
        return cls(name)

    @classmethod
    def child_spec(cls, name: str, *, id: Any = None, restart: Any = "permanent",
                   **options: Any) -> ChildSpec:
        """A spec that runs this breaker (its supervisor and owner) under your supervisor."""
        checks.name(name)
        return owners.child_spec(BreakerOwner, name, check_options(**options), id, restart)

    # ---- guarding calls -------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` here if the breaker lets it; CircuitOpen if not."""
        conn = self._conn
        words = conn.words
        if not words[1]:  # W_GATE, as a constant: closed, no faults
            # The closed path: one read, and one counter bump in our own slot.
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._failed(conn, exc, None)
                raise
            words[conn.successes] += 1
            return result
        conn, trial = self._admit(conn)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(conn, exc, trial)
            raise
        self._succeeded(conn, trial)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``call`` for asyncio: awaits ``fn(*args, **kwargs)`` if the breaker
        lets it (the outcome is the awaited one's); CircuitOpen if not."""
        conn, trial = await arun(self._admission(self._conn))
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await arun(self._outcome(conn, exc, trial))
            raise
        await arun(self._outcome(conn, None, trial))
        return result

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:
        """As a decorator: every call of ``fn`` goes through the breaker; for
        an ``async def``, every awaited call (``acall``).

        A generator function (sync or async) is refused (TypeError): the
        breaker would see only the generator being created, and count that as
        a success, while the work (and its failure) comes later.
        """
        if not callable(fn):
            raise TypeError(f"CircuitBreaker decorates a callable, not {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"CircuitBreaker cannot guard {fn.__qualname__}: it is a generator "
                            "function, whose work runs after the call returns; guard the "
                            "code that consumes it instead")
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def aguarded(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)
            return aguarded  # type: ignore[return-value]

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> T:
            return self.call(fn, *args, **kwargs)
        return guarded

    def __enter__(self) -> "CircuitBreaker":
        self._stack().append(self._admit(self._conn))
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        conn, trial = self._stack().pop()
        if exc is None:
            self._succeeded(conn, trial)
        else:
            self._failed(conn, exc, trial)

    async def __aenter__(self) -> "CircuitBreaker":
        """``async with breaker:`` as ``with``, for asyncio. Admissions are
        kept per task (a task's ``async with`` blocks nest)."""
        admitted = await arun(self._admission(self._conn))
        self._task_stack().append(admitted)
        return self

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        conn, trial = self._task_stack().pop()
        await arun(self._outcome(conn, exc, trial))

    def _stack(self) -> list:
        """This thread's admissions of ``with`` blocks, innermost last."""
        local = self._local
        if local is None:
            local = self._local = threading.local()
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        return stack

    def _task_stack(self) -> list:
        """This task's admissions of ``async with`` blocks, innermost last."""
        stacks = self._tasks
        if stacks is None:
            stacks = self._tasks = weakref.WeakKeyDictionary()
        return stacks.setdefault(asyncio.current_task(), [])

    def _admit(self, conn: _Connection) -> tuple[_Connection, Any]:
        return run(self._admission(conn))

    async def _admission(self, conn: _Connection) -> tuple[_Connection, Any]:
        """Count the call and decide: run it (trial None), run it as a granted
        half-open trial (its token), or raise CircuitOpen."""
        if conn.dead:
            conn = self._connection()
        words = conn.words
        code = words[W_STATE]
        if code == RETIRED:
            conn = self._reconnect(conn)
            words = conn.words
            code = words[W_STATE]
        if code == C_CLOSED:
            fault = words[W_FAULT]
            if fault and random.random() * FAULT_SCALE < fault:
                self._reject(conn, 0.0)
            return conn, None
        if code == C_DISABLED:
            self._reject(conn, None)
        if code == C_OPEN:
            left = words[W_HALF_OPEN_AT] - time.monotonic_ns()
            if left > 0:
                self._reject(conn, left / 1e9)
        # half-open, or open and due: the owner decides who gets a trial slot
        trial = (conn.me, next(conn.tokens))
        verdict, retry_after = await conn.owner.asking(("trial", trial), self.timeout)
        if verdict == "trial":
            return conn, trial
        if verdict == "run":
            return conn, None
        self._reject(conn, retry_after)
        raise AssertionError("unreachable")

    def _reject(self, conn: _Connection, retry_after: float | None) -> None:
        conn.words[conn.rejected] += 1
        raise CircuitOpen(self.name, retry_after)

    def _succeeded(self, conn: _Connection, trial: Any) -> None:
        conn.words[conn.successes] += 1
        if trial is not None:
            self._report(conn, ("success", trial))

    def _failed(self, conn: _Connection, exc: BaseException, trial: Any) -> None:
        run(self._outcome(conn, exc, trial))

    async def _outcome(self, conn: _Connection, exc: BaseException | None, trial: Any) -> None:
        """Count how an admitted call ended (``exc`` None: it succeeded); a
        trial's outcome, or any failure, is told to the owner."""
        if exc is None:
            conn.words[conn.successes] += 1
            if trial is not None:
                await self._reporting(conn, ("success", trial))
        elif isinstance(exc, conn.ignore) or not isinstance(exc, conn.failure_on):
            conn.words[conn.neither] += 1
            if trial is not None:
                await self._reporting(conn, ("release", trial))  # neither failure nor success
        else:
            await self._reporting(conn, ("failure", trial))

    def _report(self, conn: _Connection, request: tuple) -> None:
        run(self._reporting(conn, request))

    async def _reporting(self, conn: _Connection, request: tuple) -> None:
        """Tell the owner an outcome. If it cannot be reached the guarded
        call's own result or exception still reaches the caller."""
        try:
            await conn.owner.asking(request, self.timeout)
        except BreakerNotRunning as exc:
            lowlevel.logger(breaker=self.name).warning(
                "circuit breaker outcome not recorded", outcome=request[0], error=str(exc))

    # ---- the operator's commands ------------------------------------------------------------

    @property
    def state(self) -> str:
        """"closed", "open", "half_open" or "disabled", read from the shared page."""
        conn = self._conn
        if conn.dead:
            conn = self._connection()
        code = conn.words[W_STATE]
        if code == RETIRED:
            code = self._reconnect(conn).words[W_STATE]
        return NAMES.get(code, "closed")

    def melt(self) -> str:
        """Record one failure without a call; the state after it."""
        return self._ask("melt")

    def reset(self) -> str:
        """Close now, failures forgotten, pending timer cancelled (not while disabled)."""
        return self._ask("reset")

    def disable(self) -> str:
        """Hold it open, whatever happens, until enable()."""
        return self._ask("disable")

    def enable(self) -> str:
        """Undo disable(): closed, failures forgotten. Nothing if not disabled."""
        return self._ask("enable")

    def stats(self) -> dict[str, Any]:
        """calls (rejected included), successes, failures (melts included),
        rejected, opened, state, since (epoch seconds of the last transition),
        failures_in_window."""
        return self._ask("stats")

    def subscribe(self) -> None:
        """Send the calling process a BreakerEvent at every transition."""
        self._ask("subscribe", otpy.self())

    def unsubscribe(self) -> None:
        self._ask("unsubscribe", otpy.self())

    # ---- connections --------------------------------------------------------------------------

    def _connect(self, owner: OwnerLink) -> _Connection:
        return _Connection(owner, otpy.self(), self.timeout)

    def _reconnect(self, conn: _Connection) -> _Connection:
        """The owner retired: attach again (waiting out a restart, within the timeout)."""
        conn.retire()
        self._conn = _NOT_CONNECTED
        return self._connection()
