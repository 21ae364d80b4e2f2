"""Error recovery: what happens next when a protected call fails.

Two halves, so that a successful call never waits for the orchestrator:

- ``Recovery`` is a supervised process holding the policies, the optional
  classifier, and the counts. A handle fetches the policies once per process
  and caches them.
- ``protect(pool, ...)`` returns a ``Protected`` pool whose ``execute`` runs
  the protection chain in the caller's process: rate limit, then breaker,
  then pool. On an error it classifies the exception, consults the policy
  (retries with capped exponential backoff and jitter, failover, fallback, or
  give up), and tells the orchestrator what happened in one one-way message
  per call that saw an error.

The state machine of one protected call::

    attempt --ok--> done (recovered if an error came before)
       |
       error -> class -> policy
          retry allowed (attempts left, idempotent or surely not started,
          backoff ends before the deadline) --> wait backoff --> attempt
          else fallback? --> done (fell back)
          else --> the error reaches the caller, every attempt's error
                   attached (gave up)
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Literal

import dill

import otpy
from otpy import lowlevel

from . import _caller as caller
from . import _checks as checks
from ._caller import UNSET
from ._io import Sleep, arun, run
from ._errors import (CircuitOpen, CommandTimeout, DeadlineExceeded, PoolOverloaded, PoolTimeout,
                      PoolUnavailable, RateLimited, SessionLost, WorkerCrashed, duration)

#: the error classes ``classify`` names (a policy is keyed by one of them, or
#: by a class your classifier names and ``Recovery(classes=...)`` declares)
ERROR_CLASSES = ("worker_crashed", "timeout", "overloaded", "unavailable", "circuit_open",
                 "rate_limited", "session_lost", "permanent", "transient")
RECENT = 100  # recoveries kept for recent()
#: an attempt is started only with at least this much of the deadline left (seconds)
MIN_ATTEMPT = 0.005


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to do with one class of error.

    ``retries``: how many more attempts after the first. Before retry *n*
    (1, 2, ...) the caller waits ``min(max_backoff, backoff * multiplier **
    (n - 1))`` seconds, with ``jitter`` "full" (uniform in [0, d]) or "equal"
    (d/2 plus uniform in [0, d/2]), or none. An error that says when to come
    back (``retry_after`` of CircuitOpen, RateLimited) waits at least that.
    ``failover``: the retry must go to another worker (the failed one is
    gone or was killed; a session is re-bound and replayed there). ``fallback``:
    called as ``fallback(command, *args, **kwargs)`` when the call gives up;
    its result is returned instead of the error.
    """

    retries: int = 0
    backoff: float = 0.0
    max_backoff: float = 1.0
    multiplier: float = 2.0
    jitter: Literal["full", "equal"] | None = None
    failover: bool = False
    fallback: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        checks.count(self.retries, "Policy retries")
        for field in ("backoff", "max_backoff"):  # delays: finite, 0 allowed
            checks.finite_seconds(getattr(self, field), f"Policy {field}", zero=True)
        checks.number(self.multiplier, "Policy multiplier", minimum=1.0)
        checks.choice(self.jitter, "Policy jitter", (None, "full", "equal"))
        checks.function(self.fallback, "Policy fallback", none_ok=True)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        d = min(self.max_backoff, self.backoff * self.multiplier ** (retry - 1))
        if self.jitter is None or d == 0:
            return d
        r = (rng or random).random()
        return d * r if self.jitter == "full" else d / 2 + d / 2 * r


GIVE_UP = Policy()


def classify(exc: BaseException, classifier: Callable[[BaseException], str | None] | None = None
             ) -> str:
    """The class of an error: the user's ``classifier`` first (None falls
    through), then the built-in mapping; a command's own exception is
    "permanent"."""
    if classifier is not None:
        name = classifier(exc)
        if name is not None:
            return name
    if isinstance(exc, WorkerCrashed):
        return "worker_crashed"
    if isinstance(exc, (CommandTimeout, PoolTimeout)):
        return "timeout"
    if isinstance(exc, PoolOverloaded):
        return "overloaded"
    if isinstance(exc, PoolUnavailable):
        return "unavailable"
    if isinstance(exc, SessionLost):
        return "session_lost"
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    return "permanent"


def surely_not_started(exc: BaseException) -> bool:
    """Errors raised before the command could reach a worker: a retry can't run it twice."""
    return isinstance(exc, (PoolTimeout, PoolOverloaded, PoolUnavailable, CircuitOpen,
                            RateLimited))


@dataclasses.dataclass
class ClassStats:
    """Per error class, counted in calls (not attempts)."""

    errors: int = 0       # calls that saw this class at least once
    retried: int = 0      # ... and were retried after it
    recovered: int = 0    # ... and then succeeded
    failed_over: int = 0  # ... and were retried on another worker
    fell_back: int = 0    # calls that ended in a fallback (by their last error)
    gave_up: int = 0      # calls whose error reached the caller (by their last error)


# ---- the orchestrator process -----------------------------------------------------

class _RecoveryServer(otpy.GenServer):
    def init(self, name: str, blob: bytes) -> None:
        self.name = name
        self.blob = blob  # policies and classifier, as dill bytes for the handles
        self.stats: dict[str, ClassStats] = {}
        self.recent: deque[dict] = deque(maxlen=RECENT)
        lowlevel.annotate(otpy.self(), behaviour="Recovery", otpy_recovery=name)

    def handle_call(self, request: Any, caller: Any) -> Any:
        return lowlevel.dispatch(self, request)

    def handle_cast(self, request: Any) -> None:
        if type(request) is tuple and request[:1] == ("record",):
            self._record(request[1])

    def _op_policies(self) -> bytes:
        return self.blob

    def _op_stats(self) -> dict[str, ClassStats]:
        return {k: dataclasses.replace(v) for k, v in self.stats.items()}

    def _op_recent(self) -> list[dict]:
        return list(self.recent)

    def _record(self, event: dict) -> None:
        seen = event["classes"]
        for name in dict.fromkeys(seen):
            stats = self.stats.setdefault(name, ClassStats())
            stats.errors += 1
            if name in event["retried_after"]:
                stats.retried += 1
            if name in event["failed_over_after"]:
                stats.failed_over += 1
            if event["outcome"] == "recovered":
                stats.recovered += 1
        last = self.stats[seen[-1]]
        if event["outcome"] == "fell_back":
            last.fell_back += 1
        elif event["outcome"] == "gave_up":
            last.gave_up += 1
        self.recent.append(event)
        self._publish()
        lowlevel.logger(recovery=self.name).info(
            "recovery", command=event["command"], session=event["session"],
            classes=seen, attempts=event["attempts"], outcome=event["outcome"],
            error=event["error"])


    def _publish(self) -> None:
        """The counts, in the observer's page for otpy.metrics (one note to the
        node per call that saw an error: never on a call's own path)."""
        counts = {name: [getattr(s, f.name) for f in dataclasses.fields(s)]
                  for name, s in self.stats.items()}
        lowlevel.annotate(otpy.self(), otpy_recovery_counts=json.dumps(counts))


class Recovery:
    """A handle on a recovery orchestrator: ``Recovery("name")`` from any process."""

    def __init__(self, name: str) -> None:
        self.name = checks.name(name, "a Recovery's name")
        self._local: dict[str, Any] | None = None  # policies, when this handle made them

    def __reduce__(self) -> Any:
        return (Recovery, (self.name,))

    @classmethod
    def start_link(cls, name: str = "recovery", policies: dict[str, Policy] | None = None, *,
                   classifier: Callable[[BaseException], str | None] | None = None,
                   classes: Iterable[str] = ()) -> Recovery:
        """Start the orchestrator (under a supervisor of its own, linked to the
        caller). ``policies`` are keyed by ERROR_CLASSES, or by the names in
        ``classes``: the ones your ``classifier`` returns besides them."""
        spec = cls.child_spec(name=name, policies=policies, classifier=classifier,
                              classes=classes)
        otpy.Supervisor.start_link([spec], name=f"{name}.sup")
        handle = cls(name)
        handle._local = {"policies": dict(policies or {}), "classifier": classifier}
        return handle

    @classmethod
    def child_spec(cls, name: str = "recovery", policies: dict[str, Policy] | None = None, *,
                   classifier: Callable[[BaseException], str | None] | None = None,
                   classes: Iterable[str] = (), id: Any = None) -> otpy.ChildSpec:
        """A ChildSpec for the orchestrator, to put it under your own supervisor."""
        policies = _check_policies(policies, classes)
        checks.function(classifier, "classifier", none_ok=True)
        blob = dill.dumps((policies, classifier), recurse=True)
        return _RecoveryServer.child_spec(name, blob, name=name, id=id or name)

    def policies(self) -> tuple[dict[str, Policy], Callable | None]:
        """The policies and classifier (fetched once per process, then cached)."""
        if self._local is None:
            cached = _policy_cache.get(self.name)
            if cached is None:
                cached = dill.loads(lowlevel.ask(self.name, ("policies",), timeout=5.0))
                _policy_cache[self.name] = cached
            return cached
        return self._local["policies"], self._local["classifier"]

    def stats(self) -> dict[str, ClassStats]:
        return lowlevel.ask(self.name, ("stats",), timeout=5.0)

    def recent(self) -> list[dict]:
        """The last recoveries, oldest first: command, session, classes, attempts,
        outcome ("recovered", "fell_back", "gave_up"), error, time."""
        return lowlevel.ask(self.name, ("recent",), timeout=5.0)

    def record(self, event: dict) -> None:
        """One-way: tell the orchestrator how a call that saw errors ended."""
        otpy.cast(self.name, ("record", event))

    def stop(self) -> None:
        sup = f"{self.name}.sup"
        if otpy.whereis(sup) is not None:
            otpy.Supervisor.stop(sup)
        else:
            otpy.stop(self.name)

    def __repr__(self) -> str:
        return f"Recovery({self.name!r})"


_policy_cache: dict[str, Any] = {}


def _check_policies(policies: Any, classes: Iterable[str]) -> dict[str, Policy]:
    """Policies keyed by known classes: a misspelt one would never apply."""
    classes = checks.names(classes, "classes")
    known = ERROR_CLASSES + tuple(c for c in classes if c not in ERROR_CLASSES)
    if policies is None:
        return {}
    if not isinstance(policies, dict):
        raise TypeError(f"policies must be a dict of class name -> Policy, not {policies!r}")
    for name, policy in policies.items():
        if not isinstance(name, str):
            raise TypeError(f"policy class names are str, not {name!r}")
        if name not in known:
            raise ValueError(f"no error class {name!r}: the classes are {', '.join(known)} "
                             "(a classifier's own are declared with classes=...)")
        if not isinstance(policy, Policy):
            raise TypeError(f"policy for {name!r} must be a Policy, not {policy!r}")
    return dict(policies)


# ---- the protection chain, in the caller's process ---------------------------------

class Protected:
    """A pool behind a rate limiter, a breaker and a recovery policy; see :func:`protect`."""

    def __init__(self, pool: Any, limiter: tuple | None, breaker: Any, recovery: Recovery | None,
                 deadline: float | None, idempotent: frozenset[str],
                 breaker_failure_on: tuple[type[BaseException], ...],
                 rng: random.Random | None) -> None:
        self.pool = pool
        self.limiter = limiter
        self.breaker = breaker
        self.recovery = recovery
        self.deadline = deadline
        self.idempotent = idempotent
        self.breaker_failure_on = breaker_failure_on
        self.rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def execute(self, command: str, *args: Any, session: Any = None,
                timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``command`` through the chain; retries, fallback or the error, by
        policy. ``timeout`` bounds each attempt's run (None or ``math.inf``:
        the pool's ``command_timeout``, within the deadline)."""
        timeout = checks.seconds(timeout, "timeout")
        return run(self._protected(command, args, kwargs, session, timeout))

    async def aexecute(self, command: str, *args: Any, session: Any = None,
                       timeout: float | None = None, **kwargs: Any) -> Any:
        """``execute`` for asyncio: the same chain, the task waiting (the
        backoff is an ``asyncio.sleep``); cancelled, it stops where it is."""
        timeout = checks.seconds(timeout, "timeout")
        return await arun(self._protected(command, args, kwargs, session, timeout))

    async def _protected(self, command: str, args: tuple, kwargs: dict, session: Any,
                         timeout: float | None) -> Any:
        """The chain's steps, as operations of ``_io`` (either driver runs them)."""
        end = None if self.deadline is None else time.monotonic() + self.deadline
        policies, classifier = self.recovery.policies() if self.recovery else ({}, None)
        errors: list[tuple[str, BaseException]] = []
        retried_after: list[str] = []
        failed_over_after: list[str] = []
        while True:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining < MIN_ATTEMPT:
                errors.append(("timeout", self._too_late(command)))
                return self._give_up(command, args, kwargs, session, errors, retried_after,
                                     failed_over_after, policies.get("timeout", GIVE_UP))
            try:
                result = await self._attempt(command, args, kwargs, session, timeout, remaining)
            except Exception as caught:
                name = classify(caught, classifier)
                errors.append((name, caught))
                policy = policies.get(name, GIVE_UP)
                wait = self._retry_wait(command, caught, policy, len(errors), end)
                if wait is None:
                    return self._give_up(command, args, kwargs, session, errors, retried_after,
                                         failed_over_after, policy)
                retried_after.append(name)
                if policy.failover:
                    failed_over_after.append(name)
                if wait > 0:
                    await Sleep(wait)  # the backoff itself; bounded by the deadline
                continue
            if errors:
                self._report(command, session, errors, retried_after, failed_over_after,
                             "recovered", None)
            return result

    def _too_late(self, command: str) -> DeadlineExceeded:
        """Too little of the deadline left to start a command: giving it that
        as its timeout would only kill (and replace) the worker it reached."""
        return DeadlineExceeded(
            f"{command!r}: the deadline of {duration(self.deadline)} passed, or left "
            f"less than {duration(MIN_ATTEMPT)} to start an attempt")

    # ---- one attempt: limiter, breaker, pool ------------------------------------

    async def _attempt(self, command: str, args: tuple, kwargs: dict, session: Any,
                       timeout: float | None, remaining: float | None) -> Any:
        if self.limiter is not None:
            limiter, key, limit, window = self.limiter
            decision = await limiter._hitting(key, limit, window)
            if not decision.allowed:
                raise RateLimited(decision.retry_after, decision)
        budget = _smallest(timeout, remaining)
        if self.breaker is None:
            return await self._execute(command, args, kwargs, session, budget, remaining)
        conn, trial = await self.breaker._admission(self.breaker._conn)
        try:
            result = await self._execute(command, args, kwargs, session, budget, remaining)
        except Exception as exc:
            if self._dependency_failure(exc):
                await self.breaker._outcome(conn, exc, trial)
                raise
            # the caller's own error: not the dependency's fault, a success for the breaker
            await self.breaker._outcome(conn, None, trial)
            raise
        except BaseException as exc:  # cancelled, interrupted: as a with-block counts it
            await self.breaker._outcome(conn, exc, trial)
            raise
        await self.breaker._outcome(conn, None, trial)
        return result

    async def _execute(self, command: str, args: tuple, kwargs: dict, session: Any,
                       budget: float | None, remaining: float | None) -> Any:
        pool = self.pool
        options = {}
        if remaining is not None and session is None:
            # the wait for a free worker counts against the deadline too
            waited = (await caller.settings(pool)).checkout_timeout
            options["checkout_timeout"] = _smallest(remaining, waited)
        if budget is not None:  # else the pool's own command_timeout applies
            options["timeout"] = budget
        caller.check_input(command, session)
        return await caller.execute(pool, command, args, kwargs, session,
                                    options.get("timeout", UNSET), options.get("checkout_timeout"))

    def _dependency_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, (WorkerCrashed, CommandTimeout, PoolTimeout, PoolUnavailable,
                                SessionLost)) \
            or isinstance(exc, self.breaker_failure_on)

    # ---- deciding --------------------------------------------------------------

    def _retry_wait(self, command: str, exc: BaseException, policy: Policy, attempts: int,
                    end: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to stop retrying."""
        if attempts > policy.retries:
            return None
        if command not in self.idempotent and not surely_not_started(exc):
            return None  # it may have run: never run a non-idempotent command twice
        with self._rng_lock:
            wait = policy.delay(attempts, self.rng)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)):
            wait = max(wait, float(retry_after))
        if end is not None and time.monotonic() + wait > end - MIN_ATTEMPT:
            return None  # no retry may start after (or too close to) the deadline
        return wait

    def _give_up(self, command: str, args: tuple, kwargs: dict, session: Any,
                 errors: list[tuple[str, BaseException]], retried_after: list[str],
                 failed_over_after: list[str], policy: Policy) -> Any:
        last = errors[-1][1]
        if policy.fallback is not None:
            if session is not None:
                kwargs = {**kwargs, "session": session}
            try:
                value = policy.fallback(command, *args, **kwargs)
            except Exception as exc:  # the call did not fall back: it gave up
                exc.add_note(f"raised by the fallback for {type(last).__name__}: {last}")
                self._report(command, session, errors, retried_after, failed_over_after,
                             "gave_up", exc)
                raise
            self._report(command, session, errors, retried_after, failed_over_after,
                         "fell_back", last)
            return value
        self._report(command, session, errors, retried_after, failed_over_after, "gave_up", last)
        for number, (name, exc) in enumerate(errors, 1):
            if exc is not last:
                last.add_note(f"attempt {number}: {name}: {type(exc).__name__}: {exc}")
        if len(errors) > 1:
            last.add_note(f"gave up after {len(errors)} attempts")
        raise last

    def _report(self, command: str, session: Any, errors: list[tuple[str, BaseException]],
                retried_after: list[str], failed_over_after: list[str], outcome: str,
                error: BaseException | None) -> None:
        if self.recovery is None:
            return
        event = {"time": time.time(), "command": command, "session": repr(session),
                 "classes": [name for name, _ in errors], "attempts": len(errors) + (
                     outcome == "recovered"),
                 "retried_after": retried_after, "failed_over_after": failed_over_after,
                 "outcome": outcome,
                 "error": None if error is None else f"{type(error).__name__}: {error}"}
        try:
            self.recovery.record(event)
        except otpy.OtpyError:
            pass  # the orchestrator is restarting: the count is lost, the call is not


def _smallest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def protect(pool: Any, *, limiter: tuple | None = None, breaker: Any = None,
            recovery: Recovery | None = None, deadline: float | None = None,
            idempotent: Iterable[str] = (), breaker_failure_on: tuple = (),
            rng: random.Random | None = None) -> Protected:
    """A pool behind the protection chain: rate limit, then breaker, then pool.

    ``limiter=(rate_limiter, key, limit, window)``; ``breaker`` a
    CircuitBreaker (it records crashes and timeouts of the pool, plus
    ``breaker_failure_on`` exception types of your commands; never rate-limit
    denials or your own bad input); ``recovery`` the policies; ``deadline``
    seconds for the whole call, retries and waits included; ``idempotent``
    the commands that may run again after they may have started.
    """
    if limiter is not None and (not isinstance(limiter, tuple) or len(limiter) != 4):
        raise TypeError("limiter must be (rate_limiter, key, limit, window)")
    deadline = checks.seconds(deadline, "deadline")  # inf: none
    if recovery is not None and not isinstance(recovery, Recovery):
        raise TypeError(f"recovery must be a Recovery, not {recovery!r}")
    idempotent = checks.names(idempotent, "idempotent")
    breaker_failure_on = checks.exceptions(breaker_failure_on, "breaker_failure_on")
    return Protected(pool, limiter, breaker, recovery, deadline, frozenset(idempotent),
                     breaker_failure_on, rng)
