"""otpy_pool: what applications build on otpy's supervisors: a session pool of
worker processes, a circuit breaker, a rate limiter and error recovery, each a
supervised part of the program's tree.

The public API; every other module of the package is private. Built on
``otpy`` and ``otpy.lowlevel`` only. ``otpy_pool.testing`` (test doubles of the
pool) and ``python -m otpy_pool.bench`` (the benchmark) are tooling beside it.
"""

from ._breaker import BreakerEvent, CircuitBreaker
from ._errors import (BreakerError, BreakerNotRunning, BreakerTimeout, BrokenWorker,
                      CircuitOpen, CommandTimeout, DeadlineExceeded, InitializerFailed,
                      LimiterBusy, LimiterError, LimiterNotRunning, LimiterTimeout, PoolError,
                      PoolNotRunning, PoolOverloaded, PoolTimeout, PoolUnavailable, RateLimited,
                      SessionLost, SessionNotFound, TaskNotPicklable, UnknownCommand,
                      WorkerCrashed)
from ._limiter import Decision, RateLimiter
from ._pool import BoundSession, CheckedOut, Pool
from ._pool_executor import PoolExecutor
from ._pool_options import EVENT_KINDS, STRATEGIES, PoolEvent, PoolStatus
from ._process_pool_executor import ProcessPoolExecutor
from ._ray import RayPlacement
from ._recovery import ERROR_CLASSES, ClassStats, Policy, Protected, Recovery, classify, protect
from ._worker import RESERVED, Session, Worker, command

__all__ = [
    # the pool: worker processes with sessions (docs/pool.md)
    "Pool", "Worker", "command", "Session", "BoundSession", "CheckedOut", "PoolExecutor",
    "PoolStatus", "PoolEvent", "EVENT_KINDS", "STRATEGIES", "RESERVED",
    # concurrent.futures on a pool of its own (docs/pool.md#coming-from-concurrentfutures)
    "ProcessPoolExecutor",
    # workers placed on a Ray cluster (docs/distributed.md)
    "RayPlacement",
    # the circuit breaker and the rate limiter (docs/breaker_and_limiter.md)
    "CircuitBreaker", "BreakerEvent",
    "RateLimiter", "Decision",
    # recovery: retries, failover, fallbacks, deadlines (docs/recovery.md)
    "protect", "Protected", "Recovery", "Policy", "ClassStats", "classify", "ERROR_CLASSES",
    # errors: every one a PoolError, an otpy.OtpyError (docs/pool.md#errors)
    "PoolError", "PoolNotRunning",
    "PoolTimeout", "CommandTimeout", "PoolOverloaded", "PoolUnavailable", "WorkerCrashed",
    "SessionLost", "SessionNotFound", "UnknownCommand",
    "BrokenWorker", "InitializerFailed", "TaskNotPicklable",
    "BreakerError", "BreakerNotRunning", "BreakerTimeout", "CircuitOpen",
    "LimiterError", "LimiterNotRunning", "LimiterTimeout", "LimiterBusy", "RateLimited",
    "DeadlineExceeded",
]


def _public_modules() -> None:
    """Give every public class and function the module it is imported from,
    as trio does: reprs, tracebacks, docs and pickles then name
    ``otpy_pool.CircuitOpen``, not the private module it is written in."""
    for name in __all__:
        value = globals()[name]
        if getattr(value, "__module__", "").startswith(__name__ + "._"):
            value.__module__ = __name__


_public_modules()
