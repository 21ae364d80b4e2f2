"""The storage of sliding_window in memory: the owner holds the buckets (the
exact log needs one writer), and every hit is a call to it."""

from __future__ import annotations

from typing import Any

from .._io import run
from .._shared_owner import OwnerLink
from . import Decision


class OwnerBuckets:
    """Buckets the owner holds (sliding window): every hit is a call. The
    owner raises Retired if it holds none (a new limiter of that name, not in
    this mode): the handle attaches again."""

    def __init__(self, owner: OwnerLink, timeout: float) -> None:
        self.owner = owner
        self.timeout = timeout
        self.dead = False

    def hit(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
            count: bool) -> Decision:
        return run(self.hitting(key, limit, window, window_ns, cost, count))

    async def hitting(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
                      count: bool) -> Decision:
        allowed, used, remaining, retry_ns, reset_ns = await self.owner.asking(
            ("hit", key, limit, window_ns, cost, count), self.timeout)
        return Decision(allowed, used, remaining, retry_ns / 1e9, reset_ns / 1e9)

    def reset(self, key: Any) -> int:
        return self.owner.ask(("reset", key), self.timeout)

    def retire(self) -> None:
        self.dead = True

    def close(self) -> None:
        """Nothing to let go of."""
