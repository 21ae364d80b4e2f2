"""RateLimiter: limits that hold across every process of the node (or, with
Redis, of several machines).

One owner process (a GenServer under a supervisor of its own, registered
under the limiter's name: ``_shared_owner``) keeps the limiter. In memory,
fixed_window and token_bucket buckets live in a table in shared memory that
callers update themselves under a lock (``_limiter_shared``); sliding_window
buckets live in the owner, and each hit is one synchronous call to it. Either
way the limiter is exact under any concurrency: no hit is lost and no window
admits more than its limit. The arithmetic lives in ``_limiter_algorithms``
(pure, integer nanoseconds).

With ``storage="redis://host:port"`` the ``limits`` library's Redis storage
keeps the buckets; hits go from the calling process straight to Redis, and
the owner only holds the configuration (and checks Redis at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any, AsyncIterator, Iterator

from otpy import ChildSpec

from . import _checks as checks
from . import _shared_owner as owners
from ._io import arun
from ._errors import LimiterNotRunning, LimiterTimeout, RateLimited
from ._limiter_algorithms import ALGORITHMS
from ._limiter_owner import LimiterOwner
from ._limiter_shared import Retired
from ._limiter_storage import Decision, Storage, connect
from ._limiter_storage.redis import import_limits
from ._shared_handle import Handle
from ._shared_owner import OwnerLink

__all__ = ["RateLimiter", "Decision", "check_key", "check_options", "MAX_LIMIT"]


# ---- checking arguments ----------------------------------------------------------------------

def check_key(key: Any) -> Any:
    """A key is a str, bytes, int, or a tuple of keys; anything else is a TypeError."""
    kind = type(key)
    if kind is str or kind is bytes or kind is int:
        return key
    if isinstance(key, (str, bytes, int)):
        return key  # subclasses too (bool is an int: True is the bucket of 1, as in a dict)
    if isinstance(key, tuple):
        for item in key:
            check_key(item)
        return key
    raise TypeError(f"a rate limiter key must be a str, bytes, int or tuple of them, "
                    f"not {kind.__name__}")


#: the largest limit (and cost) every algorithm can count exactly: the shared
#: table keeps them in signed 64-bit words, a token bucket limit x window ns
MAX_LIMIT = 2 ** 62


def _check_limit(limit: Any, cost: Any) -> None:
    checks.count(limit, "limit", minimum=1, maximum=MAX_LIMIT)
    checks.count(cost, "cost", minimum=1, maximum=MAX_LIMIT)


def _checked_hit(key: Any, limit: Any, window: Any, cost: Any) -> int:
    """A hit's arguments checked (the error names the bad one); its window in ns."""
    check_key(key)
    if type(limit) is not int or type(cost) is not int or not 1 <= limit <= MAX_LIMIT \
            or not 1 <= cost <= MAX_LIMIT:
        _check_limit(limit, cost)
    if type(window) is float and 0.0 < window < 1e10:
        return round(window * 1_000_000_000) or 1
    return _window_ns(window)


def _acquire_deadline(timeout: Any) -> float:
    seconds = checks.seconds(timeout, "acquire timeout", zero=True)
    return math.inf if seconds is None else time.monotonic() + seconds


def _acquire_wait(decision: Decision, deadline: float, limit: int, cost: int) -> float:
    """How long until a denied hit may be allowed, or RateLimited at once
    if that is past the deadline (or never)."""
    if cost > limit or decision.retry_after > deadline - time.monotonic():
        raise RateLimited(decision.retry_after, decision)
    return decision.retry_after


def _window_ns(window: Any) -> int:
    return max(1, round(checks.finite_seconds(window, "window") * 1_000_000_000))


def _check_storage(storage: Any, algorithm: str) -> str | None:
    if storage is None or storage == "memory":
        return None
    if not isinstance(storage, str) or "://" not in storage \
            or not storage.split("://", 1)[0].startswith("redis"):
        raise ValueError(f"storage must be None, 'memory' or a redis:// URL, not {storage!r}")
    if algorithm == "token_bucket":
        raise ValueError("algorithm 'token_bucket' is not available with a Redis storage "
                         "(use fixed_window or sliding_window)")
    import_limits()
    return storage


def check_options(algorithm: Any, cleanup_interval: Any, storage: Any) -> dict[str, Any]:
    checks.choice(algorithm, "algorithm", ALGORITHMS)
    # finite: a limiter that never sweeps would hold every bucket it ever saw
    cleanup_interval = checks.finite_seconds(cleanup_interval, "cleanup_interval")
    return {"algorithm": algorithm, "cleanup_interval": cleanup_interval,
            "storage": _check_storage(storage, algorithm)}


class _NotConnected:
    """What a handle holds until it connects."""

    dead = True


class RateLimiter(Handle):
    """A handle on the limiter registered as ``name``: picklable, usable from
    any process and thread of the node. ``namespace`` defaults to the
    caller's; ``timeout`` bounds each call to the owner and each wait for
    the shared table's lock (None or ``math.inf``: no limit)."""

    __slots__ = ()

    KIND = "rate limiter"
    NOT_RUNNING = LimiterNotRunning
    TIMED_OUT = LimiterTimeout
    NOT_CONNECTED = _NotConnected()

    #: the largest ``limit`` and ``cost`` (2**62), the same for every algorithm
    MAX_LIMIT = MAX_LIMIT

    # ---- starting --------------------------------------------------------------------------

    @classmethod
    def start_link(cls, name: str, *, algorithm: str = "fixed_window",
                   cleanup_interval: float = 60.0, storage: str | None = None) -> "RateLimiter":
        """Start the limiter's supervisor (linked to the caller) and owner; a handle.

        ``storage``: None (in memory, this node) or ``"redis://host:port"``.
        A missing ``limits`` library is an ImportError naming the extra to install.
        """
        checks.name(name)
        owners.start(LimiterOwner, name, check_options(algorithm, cleanup_interval, storage))
        return cls(name)

    @classmethod
    def child_spec(cls, name: str, *, algorithm: str = "fixed_window",
                   cleanup_interval: float = 60.0, storage: str | None = None,
                   id: Any = None, restart: Any = "permanent") -> ChildSpec:
        """A spec that runs this limiter (its supervisor and owner) under your supervisor."""
        checks.name(name)
        options = check_options(algorithm, cleanup_interval, storage)
        return owners.child_spec(LimiterOwner, name, options, id, restart)

    # ---- hits ---------------------------------------------------------------------------

    def hit(self, key: Any, limit: int, window: float, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` on ``key``'s bucket if it fits; the Decision."""
        return self._hit(key, limit, window, cost, True)

    def inspect(self, key: Any, limit: int, window: float, cost: int = 1) -> Decision:
        """The Decision a hit would get, counting nothing."""
        return self._hit(key, limit, window, cost, False)

    def _hit(self, key: Any, limit: int, window: float, cost: int, count: bool) -> Decision:
        window_ns = _checked_hit(key, limit, window, cost)
        backend = self._conn
        if backend.dead:
            backend = self._connection()
        try:
            return backend.hit(key, limit, window, window_ns, cost, count)
        except Retired:  # stopped, or restarting: find the owner again
            self._forget()
            return self._connection().hit(key, limit, window, window_ns, cost, count)

    async def ahit(self, key: Any, limit: int, window: float, cost: int = 1) -> Decision:
        """``hit`` for asyncio. A hit that needs a message (sliding_window:
        a call to the owner) awaits it; one on Redis runs in the loop's
        default executor (the Redis client only blocks); the shared table's
        is the same few microseconds as ``hit``."""
        return await arun(self._hitting(key, limit, window, cost))

    async def _hitting(self, key: Any, limit: int, window: float, cost: int = 1) -> Decision:
        """``hit``'s steps as operations of ``_io`` (for ``ahit`` and protect's chain)."""
        window_ns = _checked_hit(key, limit, window, cost)
        backend = self._conn
        if backend.dead:
            backend = self._connection()
        try:
            return await backend.hitting(key, limit, window, window_ns, cost, True)
        except Retired:
            self._forget()
            return await self._connection().hitting(key, limit, window, window_ns, cost, True)

    def reset(self, key: Any) -> int:
        """Delete every bucket of ``key`` (all windows); how many there were."""
        check_key(key)
        backend = self._conn
        if backend.dead:
            backend = self._connection()
        try:
            return backend.reset(key)
        except Retired:
            self._forget()
            return self._connection().reset(key)

    @contextlib.contextmanager
    def limit(self, key: Any, limit: int, window: float, cost: int = 1) -> Iterator[Decision]:
        """``with api.limit(key, limit=..., window=...):`` runs the block if the
        hit is allowed, else raises RateLimited (the block does not run)."""
        decision = self.hit(key, limit, window, cost)
        if not decision.allowed:
            raise RateLimited(decision.retry_after, decision)
        yield decision

    @contextlib.asynccontextmanager
    async def alimit(self, key: Any, limit: int, window: float,
                     cost: int = 1) -> AsyncIterator[Decision]:
        """``limit`` for asyncio: ``async with api.alimit(key, limit=..., window=...):``."""
        decision = await self.ahit(key, limit, window, cost)
        if not decision.allowed:
            raise RateLimited(decision.retry_after, decision)
        yield decision

    def acquire(self, key: Any, limit: int, window: float, cost: int = 1,
                timeout: float = 5.0) -> Decision:
        """Wait until a hit is allowed (the Decision that admitted it), or raise
        RateLimited at once when it cannot be within ``timeout`` seconds (None
        or ``math.inf``: as long as it takes)."""
        deadline = _acquire_deadline(timeout)
        while True:
            decision = self.hit(key, limit, window, cost)
            if decision.allowed:
                return decision
            time.sleep(_acquire_wait(decision, deadline, limit, cost))  # the quota comes back

    async def aacquire(self, key: Any, limit: int, window: float, cost: int = 1,
                       timeout: float = 5.0) -> Decision:
        """``acquire`` for asyncio: the task sleeps until the quota is back."""
        deadline = _acquire_deadline(timeout)
        while True:
            decision = await self.ahit(key, limit, window, cost)
            if decision.allowed:
                return decision
            await asyncio.sleep(_acquire_wait(decision, deadline, limit, cost))

    def stats(self) -> dict[str, Any]:
        """algorithm, storage, buckets and keys held (None with Redis), sweeps
        done, table_bytes (the shared table's size; None unless it has one)."""
        return self._ask("stats")

    # ---- this process's connection ------------------------------------------------------

    def _connect(self, owner: OwnerLink) -> Storage:
        return connect(owner.ask(("attach",), self.timeout), self.name, owner, self.timeout)
