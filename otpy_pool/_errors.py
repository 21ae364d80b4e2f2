"""Every error otpy_pool raises, in one hierarchy::

    otpy.OtpyError
      PoolError                       every error of otpy_pool (what a protected call raises)
        PoolNotRunning (LookupError)  a pool, breaker or limiter that cannot be reached
          BreakerNotRunning, LimiterNotRunning (also BreakerError, LimiterError)
            BreakerTimeout, LimiterTimeout (also otpy.Timeout): its owner did not answer
        PoolTimeout, CommandTimeout   (also otpy.Timeout)
        PoolUnavailable, PoolOverloaded, WorkerCrashed, SessionLost,
        SessionNotFound, UnknownCommand (LookupError)
        BrokenWorker (WorkerCrashed, BrokenProcessPool)      the executors' forms, caught
        InitializerFailed (PoolUnavailable, BrokenProcessPool)  as the standard library's
        TaskNotPicklable (otpy.SerializationError, pickle.PicklingError)
        BreakerError
          CircuitOpen
        LimiterError
          RateLimited
          LimiterBusy                 (also otpy.Timeout)
        DeadlineExceeded              (also otpy.Timeout)

Why one base: ``except PoolError`` around ``Protected.execute`` catches what
the protection chain raises (an open breaker, a denied limit, a passed
deadline, the pool's errors) and nothing a command raised itself. Every
timeout is an ``otpy.Timeout`` (and so a ``TimeoutError``); every "not
running" a ``PoolNotRunning``.
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import otpy

if TYPE_CHECKING:
    from ._limiter_storage import Decision


class PoolError(otpy.OtpyError):
    """Base of every error otpy_pool raises: the pool's, the breaker's, the
    limiter's and recovery's."""


class PoolNotRunning(PoolError, LookupError):
    """A pool, breaker or limiter of that name could not be reached: never
    started, stopped, or not back from a restart before the deadline."""


class PoolTimeout(PoolError, otpy.Timeout):
    """No worker became free within the pool's ``checkout_timeout``."""


class CommandTimeout(PoolError, otpy.Timeout):
    """A command ran past its ``timeout``; its worker was killed and replaced."""


class PoolUnavailable(PoolError):
    """No worker is alive and starting one fails: raised at once instead of
    after the checkout timeout. ``cause`` is the last start failure (the
    worker's ``init`` exception, with its traceback); the pool keeps retrying."""

    def __init__(self, cause: Any, message: str | None = None) -> None:
        self.cause = cause
        super().__init__(message or f"the pool has no worker: starting one failed: {cause!r}")

    def __reduce__(self):
        return (type(self), (self.cause, str(self)))


class PoolOverloaded(PoolError):
    """``max_queue`` callers are already waiting; refused at once."""


class WorkerCrashed(PoolError):
    """The worker running the command died; ``reason`` is its exit reason."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"the worker exited: {otpy.lowlevel.describe_reason(reason)}")

    def __reduce__(self):
        return (type(self), (self.reason, str(self)))


class BrokenWorker(WorkerCrashed, BrokenProcessPool):
    """An executor's task whose worker died while running it: a WorkerCrashed
    (``reason``: the exit reason) that code written for
    ``concurrent.futures`` catches as ``BrokenProcessPool``. Only that task
    fails; the executor keeps serving."""


class InitializerFailed(PoolUnavailable, BrokenProcessPool):
    """An executor's ``initializer`` raised in its workers: ``cause`` is its
    exception. The executor is broken, as the standard library's would be."""


class TaskNotPicklable(PoolError, otpy.SerializationError, pickle.PicklingError):
    """An executor's task (its function, an argument, or its result) that
    cannot be sent between processes: a ``pickle.PicklingError`` too."""


class SessionLost(PoolError):
    """Replaying a session's ``replay=True`` commands on a new worker failed;
    ``cause`` is why. The session starts empty next time."""

    def __init__(self, session: Any, cause: Any, message: str | None = None) -> None:
        self.session = session
        self.cause = cause
        super().__init__(message or f"session {session!r} was lost: replay failed with {cause!r}")

    def __reduce__(self):
        return (type(self), (self.session, self.cause, str(self)))


class SessionNotFound(PoolError, LookupError):
    """No such session in this pool."""


class UnknownCommand(PoolError, LookupError):
    """The worker has no ``@command`` by that name."""


# ---- the circuit breaker's ------------------------------------------------------------

class BreakerError(PoolError):
    """Base of the circuit breaker's errors."""


class BreakerNotRunning(BreakerError, PoolNotRunning):
    """No breaker of that name could be reached (never started, stopped, or
    its owner did not come back before the deadline)."""


class BreakerTimeout(BreakerNotRunning, otpy.Timeout):
    """The breaker's owner did not answer within the handle's timeout."""


class CircuitOpen(BreakerError):
    """The breaker rejected the call without running it.

    ``retry_after``: seconds until it becomes half-open (0.0 when half-open
    with every trial slot taken, or for an injected fault; None while disabled).
    """

    def __init__(self, name: str, retry_after: float | None, message: str | None = None) -> None:
        self.name = name
        self.retry_after = retry_after
        if message is None:
            if retry_after is None:
                message = f"circuit breaker {name!r} is disabled"
            else:
                message = f"circuit breaker {name!r} is open (retry after {retry_after:.3f}s)"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.name, self.retry_after, str(self)))


# ---- the rate limiter's ----------------------------------------------------------------

class LimiterError(PoolError):
    """Base of the rate limiter's errors."""


class LimiterNotRunning(LimiterError, PoolNotRunning):
    """No limiter of that name could be reached before the deadline."""


class LimiterTimeout(LimiterNotRunning, otpy.Timeout):
    """The limiter's owner did not answer within the handle's timeout."""


class LimiterBusy(LimiterError, otpy.Timeout):
    """The shared table's lock stayed taken past the handle's timeout (a
    process holding it was stopped, say: a dead one cannot hold it)."""


class RateLimited(LimiterError):
    """A hit was denied; ``retry_after`` seconds until it could fit (and the
    ``decision`` that denied it)."""

    def __init__(self, retry_after: float, decision: Decision | None = None,
                 message: str | None = None) -> None:
        self.retry_after = retry_after
        self.decision = decision
        super().__init__(message or f"rate limited: retry after {retry_after:.3f}s")

    def __reduce__(self):
        return (type(self), (self.retry_after, self.decision, str(self)))


# ---- recovery's ------------------------------------------------------------------------

class DeadlineExceeded(PoolError, otpy.Timeout):
    """The protected call's deadline passed before an attempt could succeed."""


def start_error(exc: BaseException) -> BaseException:
    """What made a worker's start fail: the ``init`` exception itself (with
    its traceback) out of the StartErrors the supervisors wrapped it in, or
    the innermost StartError when there is no exception (an init timeout)."""
    while isinstance(exc, otpy.StartError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    return exc


def duration(seconds: float | None) -> str:
    """Seconds as a person reads them in an error: ``1 ms``, ``2.5 s``."""
    if seconds is None:
        return "no limit"
    if seconds < 0.01:
        return f"{seconds * 1000:.2g} ms"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    return f"{seconds:.3g} s"
