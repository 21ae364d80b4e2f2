"""The pool's errors. Every one is an ``otpy.OtpyError`` (through PoolError);
the two timeouts are also ``otpy.Timeout`` (and so ``TimeoutError``)."""

from __future__ import annotations

from typing import Any

import otpy


class PoolError(otpy.OtpyError):
    """Base of every error the pool raises."""


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
