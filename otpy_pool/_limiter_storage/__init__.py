"""Where a rate limiter's buckets are, as one process reaches them: the
storages, behind one Protocol (as ``limits.storage`` does), each in its own
module.

- ``table``: fixed_window and token_bucket in memory: a table in shared
  memory that this process updates itself, under a lock (``_limiter_shared``).
- ``owner``: sliding_window in memory: the owner holds the buckets, every hit
  is a call to it.
- ``redis``: any algorithm but token_bucket, on Redis, through the ``limits``
  library: hits go from this process straight to Redis.

The owner says which one a handle uses (its ``attach`` answer); the handle
keeps it in its process's connection cache (``_shared_handle``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from .._shared_handle import Connection
from .._shared_owner import OwnerLink


class Decision(NamedTuple):
    """The answer to a hit: ``count`` used in the bucket and ``remaining``
    (after this hit, if allowed), ``retry_after`` seconds until a denied hit
    would fit (0 if allowed), ``reset_at`` epoch seconds when the bucket is
    back to empty (full, for a token bucket)."""

    allowed: bool
    count: int  # type: ignore[assignment]  # the issue's name; shadows tuple.count
    remaining: int
    retry_after: float
    reset_at: float


def decision_of(fields: tuple, _new: Any = tuple.__new__) -> Decision:
    """A Decision from its five fields, without NamedTuple's keyword handling."""
    return _new(Decision, fields)


class Storage(Connection, Protocol):
    """One process's way to one limiter's buckets: a connection of the
    handle's cache (``dead``, ``owner``, ``retire``, ``close``) that hits.

    ``hit`` and ``reset`` raise ``Retired`` (``_limiter_shared``) when the
    limiter they reach was stopped or replaced by one in another mode: the
    handle lets this storage go and attaches again.
    """

    def hit(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
            count: bool) -> Decision:
        """Decide (and, if ``count`` and allowed, record) a hit of ``cost``."""

    async def hitting(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
                      count: bool) -> Decision:
        """``hit``'s steps as operations of ``_io``, for ``RateLimiter.ahit``."""

    def reset(self, key: Any) -> int:
        """Delete every bucket of ``key``; how many there were."""


def connect(how: tuple, name: str, owner: OwnerLink, timeout: float) -> Storage:
    """The storage the owner's ``attach`` answer ``how`` names."""
    if how[0] == "shared":
        from .table import SharedTable
        return SharedTable(how[1], how[2], owner, timeout)
    if how[0] == "call":
        from .owner import OwnerBuckets
        return OwnerBuckets(owner, timeout)
    from .redis import RedisBuckets
    return RedisBuckets(how[1], how[2], name, owner)
