"""The rate limiter's arithmetic, pure: buckets in a dict, time passed in as
integer nanoseconds since the epoch. Integers throughout, so a window
boundary or a token count is exact (no float drift), and the property tests
can drive it with any clock they like.

A bucket is identified by (key, window, algorithm); the limit is given per
hit. A denied hit is not counted (as in the ``limits`` library), so a
smaller cost can still fit after a larger one was denied.

- fixed_window: windows aligned on ``floor(now / window)``; at most ``limit``
  per window. Burst: up to 2 x limit across a boundary (the end of one window
  and the start of the next).
- sliding_window: the exact log. Every admitted hit is kept, with its cost,
  until it is ``window`` old (a hit exactly ``window`` old no longer counts);
  any span of ``window`` seconds holds at most ``limit``. No boundary burst;
  memory up to ``limit`` entries per bucket.
- token_bucket: starts full with ``limit`` tokens, refills at
  ``limit / window`` tokens a second, a hit takes ``cost`` tokens. Burst: a
  full bucket (``limit``) at once, then the refill rate.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")


class Outcome(NamedTuple):
    """A decision in integer nanoseconds (the handle turns it into a Decision)."""

    allowed: bool
    count: int  # type: ignore[assignment]  # shadows tuple.count, as Decision does
    remaining: int
    retry_after_ns: int
    reset_at_ns: int


class Buckets:
    """Every bucket of one limiter: ``{key: {window_ns: state}}``."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        self.algorithm = algorithm
        self.table: dict[Any, dict[int, Any]] = {}
        self._decide = getattr(self, "_" + algorithm)

    def hit(self, key: Any, limit: int, window_ns: int, cost: int, now_ns: int,
            count: bool = True) -> Outcome:
        """Decide (and, if ``count`` and allowed, record) a hit of ``cost``."""
        windows = self.table.get(key)
        state = windows.get(window_ns) if windows is not None else None
        outcome, state = self._decide(state, limit, window_ns, cost, now_ns, count)
        if count and outcome.allowed:
            if windows is None:
                windows = self.table[key] = {}
            windows[window_ns] = state
        return outcome

    def reset(self, key: Any) -> int:
        """Delete every bucket of ``key``; how many there were."""
        return len(self.table.pop(key, ()))

    def __len__(self) -> int:
        return sum(len(windows) for windows in self.table.values())

    def sweep(self, now_ns: int) -> int:
        """Drop the buckets that no longer hold anything; how many went.

        The table is rebuilt rather than deleted from, because a dict never
        shrinks on deletion: a million keys gone must give their memory back.
        """
        expired = getattr(self, "_expired_" + self.algorithm)
        kept: dict[Any, dict[int, Any]] = {}
        removed = 0
        for key, windows in self.table.items():
            alive = {w: s for w, s in windows.items() if not expired(s, w, now_ns)}
            removed += len(windows) - len(alive)
            if alive:
                kept[key] = alive
        self.table = kept
        return removed

    # ---- fixed window: state [window index, count] ------------------------------------------

    @staticmethod
    def _fixed_window(state: list | None, limit: int, w: int, cost: int, now: int,
                      count: bool) -> tuple[Outcome, list]:
        index = now // w
        used = state[1] if state is not None and state[0] == index else 0
        reset_at = (index + 1) * w
        allowed = used + cost <= limit
        if allowed and count:
            used += cost
        retry = 0 if allowed else reset_at - now  # 0 < retry <= w
        return Outcome(allowed, used, max(0, limit - used), retry, reset_at), [index, used]

    @staticmethod
    def _expired_fixed_window(state: list, w: int, now: int) -> bool:
        return state[0] < now // w

    # ---- sliding window (exact log): state [deque of (time, cost), total] -----------------

    @staticmethod
    def _sliding_window(state: list | None, limit: int, w: int, cost: int, now: int,
                        count: bool) -> tuple[Outcome, list]:
        if state is None:
            state = [deque(), 0]
        log: deque = state[0]
        while log and log[0][0] <= now - w:
            state[1] -= log.popleft()[1]
        used = state[1]
        allowed = used + cost <= limit
        if allowed and count:
            log.append((now, cost))
            state[1] = used = used + cost
        if allowed:
            retry = 0
        elif cost > limit:
            retry = w  # never fits; a window is as good an answer as any
        else:
            need, freed, retry = used + cost - limit, 0, w
            for at, c in log:  # oldest first: wait until enough has expired
                freed += c
                if freed >= need:
                    retry = at + w - now
                    break
        reset_at = log[-1][0] + w if log else now
        return Outcome(allowed, used, max(0, limit - used), retry, reset_at), state

    @staticmethod
    def _expired_sliding_window(state: list, w: int, now: int) -> bool:
        log = state[0]
        return not log or log[-1][0] <= now - w

    # ---- token bucket: state [tokens x w, last refill time, limit] ---------------------------
    # A token is `w` units, and the bucket gains `limit` units a nanosecond:
    # limit tokens per window, in integers.

    @staticmethod
    def _token_bucket(state: list | None, limit: int, w: int, cost: int, now: int,
                      count: bool) -> tuple[Outcome, list]:
        capacity = limit * w
        if state is None:
            units = capacity  # a new bucket starts full
        else:
            units = min(capacity, state[0] + max(0, now - state[1]) * limit)
        need = cost * w
        allowed = units >= need
        if allowed and count:
            units -= need
        remaining = units // w
        if allowed:
            retry = 0
        elif cost > limit:
            retry = w
        else:
            retry = -(-(need - units) // limit)
        reset_at = now + -(-(capacity - units) // limit)
        return Outcome(allowed, limit - remaining, remaining, retry, reset_at), [units, now, limit]

    @staticmethod
    def _expired_token_bucket(state: list, w: int, now: int) -> bool:
        units, last, limit = state
        return units + max(0, now - last) * limit >= limit * w  # full again: same as new
