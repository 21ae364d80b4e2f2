"""RestartIntensity: "more than N events within T seconds", a sliding window.

A supervisor counts restarts with it; a circuit breaker can count failures
the same way.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


class RestartIntensity:
    """OTP's restart intensity: more than ``max_restarts`` events within
    ``max_seconds`` means give up. An event exactly ``max_seconds`` old no
    longer counts. ``clock`` is injectable for tests."""

    def __init__(self, max_restarts: int, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
        if not isinstance(max_seconds, (int, float)) or isinstance(max_seconds, bool) \
                or max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, not {max_seconds!r}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.clock = clock
        self.restarts: deque[float] = deque()

    def add(self) -> bool:
        """Record an event; True if that exceeds the intensity."""
        self.restarts.append(self.clock())
        return self.count() > self.max_restarts

    def count(self) -> int:
        """Events within the window, as of now."""
        now = self.clock()
        while self.restarts and self.restarts[0] <= now - self.max_seconds:
            self.restarts.popleft()
        return len(self.restarts)

    def clear(self) -> None:
        self.restarts.clear()
