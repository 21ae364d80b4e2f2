"""otpy_pool: what applications build on otpy's supervisors: a session pool of
worker processes, a circuit breaker, a rate limiter and error recovery, each a
supervised part of the program's tree.

Built on ``otpy`` and ``otpy.lowlevel`` only.
"""

__all__: list[str] = []

# ---- pool (issue: session pool) ----
from ._errors import (CommandTimeout, PoolError, PoolNotRunning, PoolOverloaded, PoolTimeout,
                      PoolUnavailable, SessionLost, SessionNotFound, UnknownCommand,
                      WorkerCrashed)
from ._pool import BoundSession, CheckedOut, Pool
from ._pool_executor import PoolExecutor
from ._pool_options import EVENT_KINDS, STRATEGIES, PoolEvent, PoolStatus
from ._worker import RESERVED, Session, Worker, command

__all__ += [
    "Pool", "PoolStatus", "PoolEvent", "EVENT_KINDS", "STRATEGIES", "PoolExecutor", "CheckedOut",
    "BoundSession", "Worker", "command", "Session", "RESERVED",
    "PoolError", "PoolNotRunning", "PoolTimeout", "CommandTimeout", "PoolOverloaded",
    "PoolUnavailable", "WorkerCrashed",
    "SessionLost", "SessionNotFound", "UnknownCommand",
]

# ---- breaker and limiter ----
from ._breaker import BreakerEvent, CircuitBreaker
from ._errors import (BreakerError, BreakerNotRunning, BreakerTimeout, CircuitOpen, LimiterBusy,
                      LimiterError, LimiterNotRunning, LimiterTimeout, RateLimited)
from ._limiter import Decision, RateLimiter

__all__ += ["CircuitBreaker", "CircuitOpen", "BreakerEvent", "BreakerError", "BreakerNotRunning",
            "BreakerTimeout", "RateLimiter", "RateLimited", "Decision", "LimiterError",
            "LimiterNotRunning", "LimiterTimeout", "LimiterBusy"]

# ---- recovery ----
from ._errors import DeadlineExceeded
from ._recovery import (ERROR_CLASSES, ClassStats, Policy, Protected, Recovery, classify,
                        protect)

__all__ += ["Recovery", "Policy", "protect", "Protected", "classify", "ClassStats",
            "DeadlineExceeded", "ERROR_CLASSES"]
