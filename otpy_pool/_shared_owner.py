"""Reaching the owner process of a breaker or limiter by name, from any
process or thread, across the owner's restarts.

A handle carries its owner's registered name and the namespace it was made
in. A call that finds the owner dead or not yet registered (it is being
restarted by its supervisor) is retried until ``timeout``: a caller waits out
a restart instead of failing, and never waits longer than its deadline.
"""

from __future__ import annotations

import math
import time
from typing import Any

from otpy import Exited, NoProc, Pid, Timeout
from otpy import lowlevel

#: retry pauses while an owner is being restarted (seconds, doubling)
_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.05


def handle_timeout(value: Any) -> float:
    """A handle's bound on each call to its owner, restarts waited out
    included: seconds > 0, or None / ``math.inf`` for no limit (kept as inf)."""
    seconds = lowlevel.check_timeout(value, "timeout", zero=False)
    return math.inf if seconds is None else seconds


def resolve_in(name: str, namespace: str) -> Pid:
    """The pid registered as ``name`` in ``namespace``; NoProc if none."""
    if namespace == lowlevel.current_namespace():
        return lowlevel.resolve(name)
    lowlevel.enter_namespace(namespace)
    try:
        return lowlevel.resolve(name)
    finally:
        lowlevel.leave_namespace(namespace)


class OwnerLink:
    """A cached pid for (name, namespace), re-resolved when the owner changes."""

    __slots__ = ("name", "namespace", "kind", "error", "timed_out", "pid")

    def __init__(self, name: str, namespace: str, kind: str, error: type[Exception],
                 timed_out: type[Exception]) -> None:
        self.name = name
        self.namespace = namespace
        self.kind = kind  # "circuit breaker" / "rate limiter", for messages
        self.error = error  # raised when the owner cannot be reached in time
        self.timed_out = timed_out  # raised when it does not answer in time
        self.pid: Pid | None = None

    def call(self, request: Any, timeout: float) -> Any:
        """``lowlevel.call`` the owner; retried across a restart until ``timeout``."""
        deadline = time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            try:
                pid = self.pid
                if pid is None:
                    pid = self.pid = resolve_in(self.name, self.namespace)
                return lowlevel.call(pid, request, max(0.0, deadline - time.monotonic()))
            except (NoProc, Exited) as exc:
                self.pid = None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(
                        f"{self.kind} {self.name!r} is not running "
                        f"(namespace {self.namespace!r}): {exc}") from None
                time.sleep(min(pause, left))  # waiting out a restart, bounded
                pause = min(pause * 2, _MAX_PAUSE)
            except Timeout:
                raise self.timed_out(f"{self.kind} {self.name!r} did not answer "
                                     f"within {timeout}s") from None

    def ask(self, request: tuple, timeout: float) -> Any:
        """As :meth:`call`, for an owner answering with ``lowlevel.dispatch``."""
        outcome, value = self.call(request, timeout)
        if outcome == "error":
            raise value
        return value
