"""The storage on Redis, through the ``limits`` library: one limit for several
machines. Hits go from the calling process straight to Redis; the owner only
holds the configuration (and checks at start that Redis answers)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from .._io import Blocking
from .._limiter_shared import encode_key
from .._shared_owner import OwnerLink
from . import Decision

INSTALL_HINT = "pip install 'otpy[redis]'  (the limits library with its Redis client)"


def import_limits() -> Any:
    try:
        import limits
        import limits.storage
        import limits.strategies
        import redis  # noqa: F401  (limits imports it lazily; fail here, not on the first hit)
    except ImportError as exc:
        raise ImportError(f"a Redis storage for RateLimiter needs {INSTALL_HINT}; "
                          f"missing: {exc.name or exc}") from None
    return limits


def key_digest(key: Any) -> str:
    """A stable text id for a key: equal keys (as Python values) give equal ids,
    different ones different ids, in every process and on every machine."""
    return hashlib.sha256(encode_key(key)).hexdigest()


def _storage(url: str, name: str) -> Any:
    """limits' Redis storage at ``url``, its keys under the limiter's prefix."""
    return import_limits().storage.storage_from_string(url, key_prefix=f"otpy-{name}")


def check_reachable(name: str, options: dict[str, Any]) -> None:
    """A limiter on Redis starts only if Redis answers."""
    storage = _storage(options["storage"], name)
    try:
        reachable = bool(storage.check())
    except Exception:
        reachable = False
    if not reachable:
        raise ConnectionError(f"rate limiter {name!r}: Redis at {options['storage']} "
                              "is not reachable")


class RedisBuckets:
    """The same operations as the in-memory owner, on the limits library's
    Redis storage (fixed window, and the moving window: the exact log)."""

    def __init__(self, url: str, algorithm: str, name: str, owner: OwnerLink) -> None:
        limits = import_limits()
        self.owner = owner
        self.limits = limits
        self.storage = _storage(url, name)
        self.fixed = algorithm == "fixed_window"
        strategy = (limits.strategies.FixedWindowRateLimiter if self.fixed
                    else limits.strategies.MovingWindowRateLimiter)
        self.strategy = strategy(self.storage)

    dead = False  # a client per process; nothing to redo after a fork but reconnecting

    def retire(self) -> None:
        self.dead = True

    def close(self) -> None:
        """Nothing: the client's connections close with it."""

    def hit(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
            count: bool) -> Decision:
        seconds = int(window)
        if seconds != window:
            raise ValueError(f"with a Redis storage, window must be a whole number of seconds "
                             f"(the limits library's granularity), not {window!r}")
        item = self.limits.RateLimitItemPerSecond(limit, seconds, namespace="otpy")
        ident = key_digest(key)
        if count and self.fixed:
            # limits' fixed window counts a denied hit; ours does not (as its
            # moving window): take the cost back. Under contention a denial in
            # flight can briefly deny another hit that would fit, never admit
            # one too many.
            name, expiry = item.key_for(ident), item.get_expiry()
            allowed = self.storage.incr(name, expiry, amount=cost) <= limit
            if not allowed:
                self.storage.incr(name, expiry, amount=-cost)
        elif count:
            allowed = self.strategy.hit(item, ident, cost=cost)
        else:
            allowed = self.strategy.test(item, ident, cost=cost)
        reset_at, remaining = self.strategy.get_window_stats(item, ident)
        now = time.time()
        retry = 0.0 if allowed else max(1e-6, min(float(window), reset_at - now))
        return Decision(allowed, limit - remaining, remaining, retry, float(reset_at))

    async def hitting(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
                      count: bool) -> Decision:
        return await Blocking(self.hit, key, limit, window, window_ns, cost, count)

    def reset(self, key: Any) -> int:
        """Delete every bucket of ``key`` (every window and limit it was used with)."""
        connection = self.storage.get_connection()
        pattern = self.storage.prefixed_key(f"otpy/{key_digest(key)}/") + "*"
        names = list(connection.scan_iter(match=pattern))
        buckets = {n for n in names if not n.endswith(b"/-1")}  # limits' helper keys
        if names:
            connection.delete(*names)
        return len(buckets) if buckets else len(names)
