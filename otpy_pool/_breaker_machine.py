"""The circuit breaker's state machine, pure: no processes, no I/O, an
injectable clock. The owner process runs one; the property tests run it
against a model with a fake clock.

::

    closed --max_failures-th failure within window--> open
    open --reset_after elapsed (timer, or a caller asking for a trial)--> half_open
    half_open --success_threshold trial successes--> closed (failures forgotten)
    half_open --a trial fails--> open (another reset_after)
    any --disable()--> disabled --enable()--> closed (failures forgotten)
    open/half_open --reset()--> closed;  closed --reset()--> closed, failures forgotten

``gen`` grows at every transition: a timer armed for one opening carries
its ``gen``, so a timer that outlived its opening (reset, disabled, reopened)
is recognised as stale and does nothing.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from otpy.lowlevel import RestartIntensity

CLOSED, OPEN, HALF_OPEN, DISABLED = "closed", "open", "half_open", "disabled"
STATES = (CLOSED, OPEN, HALF_OPEN, DISABLED)


class BreakerMachine:
    """One breaker's state. Every method takes the time from ``clock``
    (monotonic seconds) and stamps transitions with ``wall`` (epoch seconds).
    Transitions are appended to ``events`` as ``(state, previous, wall time)``
    for the owner to publish and clear."""

    def __init__(self, max_failures: int, window: float, reset_after: float,
                 half_open_calls: int = 1, success_threshold: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.reset_after = reset_after
        self.half_open_calls = half_open_calls
        self.success_threshold = success_threshold
        self.clock = clock
        self.wall = wall
        # "max_failures within window" is OTP's restart intensity with one
        # less allowed: the max_failures-th event exceeds it. An event exactly
        # `window` old no longer counts, as for restarts.
        self.recent = RestartIntensity(max_failures - 1, window, clock)
        self.state = CLOSED
        self.gen = 0
        self.half_open_at: float | None = None
        self.trials: set[Any] = set()  # tokens: (pid, n) from handles
        self.trial_successes = 0
        self.failures = 0  # every failure ever reported (melts included)
        self.opened = 0
        self.since = wall()
        self.events: list[tuple[str, str, float]] = []

    # ---- what callers report ------------------------------------------------------

    def failure(self, trial: Any = None) -> None:
        """A guarded call failed (``trial``: the token of a half-open trial)."""
        self.failures += 1
        if trial is not None and trial in self.trials:
            self._go(OPEN)
        elif self.state == CLOSED:
            if self.recent.add():
                self._go(OPEN)
        # open, disabled, or a non-trial call that started before the breaker
        # opened and ended while half-open: counted, but changes nothing

    def melt(self) -> None:
        """A failure without a call (fuse's melt)."""
        self.failure()

    def success(self, trial: Any) -> None:
        """A half-open trial succeeded (closed-state successes need no owner)."""
        if trial in self.trials:
            self.trials.discard(trial)
            self.trial_successes += 1
            if self.trial_successes >= self.success_threshold:
                self._go(CLOSED)

    def release(self, trial: Any) -> None:
        """A trial ended without a verdict (an ignored exception, or its process died)."""
        self.trials.discard(trial)

    def try_trial(self, trial: Any) -> bool:
        """Grant a half-open trial slot to ``trial``, if one is free."""
        self.advance()
        if self.state == HALF_OPEN and len(self.trials) < self.half_open_calls:
            self.trials.add(trial)
            return True
        return False

    # ---- time and the operator's commands -------------------------------------------

    def advance(self) -> None:
        """Open for reset_after seconds already: become half-open."""
        if self.state == OPEN and self.half_open_at is not None \
                and self.clock() >= self.half_open_at:
            self._go(HALF_OPEN)

    def on_timer(self, gen: int) -> None:
        """The half-open timer armed at ``gen`` fired; stale if anything happened since."""
        if gen == self.gen:
            self.advance()

    def reset(self) -> None:
        """Close at once, failures forgotten (a disabled breaker stays disabled)."""
        if self.state == DISABLED:
            return
        if self.state != CLOSED:
            self._go(CLOSED)
        self.recent.clear()

    def disable(self) -> None:
        if self.state != DISABLED:
            self._go(DISABLED)

    def enable(self) -> None:
        if self.state == DISABLED:
            self._go(CLOSED)

    # ---- reading --------------------------------------------------------------------

    def retry_after(self) -> float | None:
        """Seconds until half-open while open; None while disabled; else 0."""
        if self.state == DISABLED:
            return None
        if self.state == OPEN and self.half_open_at is not None:
            return max(0.0, self.half_open_at - self.clock())
        return 0.0

    def failures_in_window(self) -> int:
        return self.recent.count()

    # ---- persistence (the owner keeps a snapshot a replacement resumes from) --------

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "gen": self.gen, "half_open_at": self.half_open_at,
                "recent": list(self.recent.restarts), "trials": list(self.trials),
                "trial_successes": self.trial_successes, "failures": self.failures,
                "opened": self.opened, "since": self.since}

    def restore(self, snap: dict[str, Any]) -> None:
        self.state = snap["state"]
        self.gen = snap["gen"]
        self.half_open_at = snap["half_open_at"]
        self.recent.restarts.clear()
        self.recent.restarts.extend(snap["recent"])
        self.trials = set(snap["trials"])
        self.trial_successes = snap["trial_successes"]
        self.failures = snap["failures"]
        self.opened = snap["opened"]
        self.since = snap["since"]

    # ---- transitions ----------------------------------------------------------------

    def _go(self, state: str) -> None:
        previous = self.state
        self.state = state
        self.gen += 1
        self.since = self.wall()
        self.trials.clear()
        self.trial_successes = 0
        self.recent.clear()  # history matters only while closed, and restarts from zero
        if state == OPEN:
            self.opened += 1
            self.half_open_at = self.clock() + self.reset_after
        else:
            self.half_open_at = None
        self.events.append((state, previous, self.since))
