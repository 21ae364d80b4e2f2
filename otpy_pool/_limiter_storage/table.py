"""The storage of fixed_window and token_bucket in memory: the shared table
(``_limiter_shared``), mapped and updated by this process itself under the
table's lock, so a hit costs no message to the owner."""

from __future__ import annotations

import time
from typing import Any

from .._errors import LimiterBusy, LimiterNotRunning
from .._limiter_shared import (C_ALLOWED, C_DENIED, GROW, Control, LockTimeout, TableGone,
                               decide, digest, reset_key)
from .._shared_owner import OwnerLink
from . import Decision, decision_of


class SharedTable:
    """This process's access to a shared table (fixed window, token bucket)."""

    def __init__(self, control_ref: tuple[int, int, int], algorithm: str, owner: OwnerLink,
                 timeout: float) -> None:
        self.control = Control(control_ref[0], control_ref[1], timeout)
        self.algorithm = algorithm
        self.owner = owner
        self.timeout = timeout
        self.dead = False

    def retire(self) -> None:
        self.dead = True

    def hit(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
            count: bool) -> Decision:
        hi, lo = digest(key)
        deadline = None
        while True:
            try:
                with self.control as control:
                    outcome = decide(control.current(), self.algorithm, hi, lo, limit,
                                     window_ns, cost, time.time_ns(), count)
                    if count and outcome is not GROW:
                        control.words[C_ALLOWED if outcome[0] else C_DENIED] += 1
            except LockTimeout as exc:
                raise LimiterBusy(str(exc)) from None
            except TableGone:
                deadline = self._wait_for_table(deadline)
                continue
            if outcome is not GROW:
                allowed, used, remaining, retry_ns, reset_ns = outcome
                return decision_of((allowed, used, remaining, retry_ns / 1e9, reset_ns / 1e9))
            # the table is half full: the owner doubles it (once, however many ask)
            self.owner.ask(("grow", self.control.gen), self.timeout)

    async def hitting(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
                      count: bool) -> Decision:
        """No message: this process updates the table itself (the rare
        growth of the table asks the owner, waiting as ``hit`` does)."""
        return self.hit(key, limit, window, window_ns, cost, count)

    def reset(self, key: Any) -> int:
        hi, lo = digest(key)
        deadline = None
        while True:
            try:
                with self.control as control:
                    return reset_key(control.current(), hi, lo)
            except LockTimeout as exc:
                raise LimiterBusy(str(exc)) from None
            except TableGone:
                deadline = self._wait_for_table(deadline)

    def _wait_for_table(self, deadline: float | None) -> float:
        """The owner died with the table: its replacement publishes a new one
        in a moment. Wait for it, within the timeout."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.timeout
        elif now > deadline:
            raise LimiterNotRunning(f"rate limiter {self.owner.name!r}: no owner published a "
                                    f"table within {self.timeout}s")
        time.sleep(0.001)  # the replacement is starting; nothing to wait on but the page
        return deadline

    def close(self) -> None:
        self.control.close()
