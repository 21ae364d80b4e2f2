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

import contextlib
import hashlib
import math
import time
from typing import Any, Iterator, NamedTuple

import otpy
from otpy import ChildSpec, Pid
from otpy import lowlevel

from . import _checks as checks
from . import _shared_owner as owners
from ._errors import LimiterBusy, LimiterNotRunning, LimiterTimeout, RateLimited
from ._limiter_algorithms import ALGORITHMS, Buckets
from ._limiter_shared import (C_GEN, C_RETIRED, CONTROL_BYTES, GROW, Control, LockTimeout,
                              Retired, TableGone, TableOwner, decide, digest, encode_key,
                              reset_key)
from ._shared_handle import Handle
from ._shared_owner import Owner, OwnerLink

INSTALL_HINT = "pip install 'otpy[redis]'  (the limits library with its Redis client)"
#: algorithms whose buckets live in shared memory (the exact log needs the owner)
SHARED = ("fixed_window", "token_bucket")


# ---- results ------------------------------------------------------------------

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


def _decision(fields: tuple, _new: Any = tuple.__new__) -> Decision:
    """A Decision from its five fields, without NamedTuple's keyword handling."""
    return _new(Decision, fields)


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
    _import_limits()
    return storage


def check_options(algorithm: Any, cleanup_interval: Any, storage: Any) -> dict[str, Any]:
    checks.choice(algorithm, "algorithm", ALGORITHMS)
    # finite: a limiter that never sweeps would hold every bucket it ever saw
    cleanup_interval = checks.finite_seconds(cleanup_interval, "cleanup_interval")
    return {"algorithm": algorithm, "cleanup_interval": cleanup_interval,
            "storage": _check_storage(storage, algorithm)}


# ---- Redis, through the limits library --------------------------------------------------------

def _import_limits() -> Any:
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


def _check_redis(name: str, options: dict[str, Any]) -> None:
    """A limiter on Redis starts only if Redis answers."""
    backend = RedisBuckets(options["storage"], options["algorithm"], name, None)
    try:
        reachable = backend.check()
    except Exception:
        reachable = False
    if not reachable:
        raise ConnectionError(f"rate limiter {name!r}: Redis at {options['storage']} "
                              "is not reachable")


class RedisBuckets:
    """The same operations as the in-memory owner, on the limits library's
    Redis storage (fixed window, and the moving window: the exact log)."""

    def __init__(self, url: str, algorithm: str, name: str, owner: OwnerLink | None) -> None:
        limits = _import_limits()
        self.owner = owner
        self.limits = limits
        self.storage = limits.storage.storage_from_string(url, key_prefix=f"otpy-{name}")
        self.fixed = algorithm == "fixed_window"
        strategy = (limits.strategies.FixedWindowRateLimiter if self.fixed
                    else limits.strategies.MovingWindowRateLimiter)
        self.strategy = strategy(self.storage)

    def check(self) -> bool:
        return bool(self.storage.check())

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

    def reset(self, key: Any) -> int:
        """Delete every bucket of ``key`` (every window and limit it was used with)."""
        connection = self.storage.get_connection()
        pattern = self.storage.prefixed_key(f"otpy/{key_digest(key)}/") + "*"
        names = list(connection.scan_iter(match=pattern))
        buckets = {n for n in names if not n.endswith(b"/-1")}  # limits' helper keys
        if names:
            connection.delete(*names)
        return len(buckets) if buckets else len(names)


# ---- the owner ----------------------------------------------------------------------------

class LimiterOwner(Owner):
    """The process holding one limiter's buckets (registered under its name).

    fixed_window and token_bucket: the buckets are in a shared table (see
    ``_limiter_shared``) that callers update themselves; the owner creates,
    grows and sweeps it, under the control page its supervisor holds (the
    lock). sliding_window: the owner holds the buckets and answers every
    hit. A replacement after a crash starts with no buckets: what was
    counted before is forgotten (see docs/breaker_and_limiter.md).
    """

    KIND = "limiter"

    @classmethod
    def page_bytes(cls, options: dict[str, Any]) -> int | None:
        shared = options["storage"] is None and options["algorithm"] in SHARED
        return CONTROL_BYTES if shared else None

    def init(self, name: str, options: dict[str, Any], supervisor: Pid,
             control_ref: tuple[int, int, int] | None) -> None:
        otpy.trap_exit(True)
        self.name = name
        self.options = options
        self.supervisor = supervisor
        self.control_ref = control_ref
        self.sweeps = 0
        self.log = lowlevel.logger(limiter=name)
        self.buckets: Buckets | None = None
        self.tables: TableOwner | None = None
        if control_ref is not None:
            control = Control(control_ref[0], control_ref[1])
            self.tables = TableOwner(control, options["algorithm"])
            with control:
                control.words[C_RETIRED] = 0
                self.tables.rebuild(time.time_ns())
        elif options["storage"] is None:
            self.buckets = Buckets(options["algorithm"])
        else:
            _check_redis(name, options)
            return
        self._arm_sweep()

    # ---- operations (lowlevel.dispatch) ----------------------------------------------------

    def _op_attach(self) -> tuple:
        """How a handle reaches the buckets: ("shared", control page,
        algorithm), ("call",) or ("redis", url, algorithm)."""
        if self.tables is not None:
            return ("shared", self.control_ref, self.options["algorithm"])
        if self.buckets is not None:
            return ("call",)
        return ("redis", self.options["storage"], self.options["algorithm"])

    def _op_grow(self, gen: int) -> None:
        if self.tables is not None:
            with self.tables.control:
                if self.tables.control.words[C_GEN] == gen:  # not grown since asked
                    self.tables.rebuild(time.time_ns(), grow=True)

    def _op_hit(self, key: Any, limit: int, window_ns: int, cost: int, count: bool) -> tuple:
        if self.buckets is None:
            raise Retired()  # a new limiter of that name, not in this mode: attach again
        return tuple(self.buckets.hit(key, limit, window_ns, cost, time.time_ns(), count))

    def _op_reset(self, key: Any) -> int:
        if self.buckets is None:
            raise Retired()
        return self.buckets.reset(key)

    def _op_stats(self) -> dict[str, Any]:
        buckets = keys = table_bytes = None
        if self.tables is not None:
            with self.tables.control:
                buckets, keys = self.tables.counts()
                table_bytes = self.tables.size()
        elif self.buckets is not None:
            buckets, keys = len(self.buckets), len(self.buckets.table)
        return {"algorithm": self.options["algorithm"],
                "storage": self.options["storage"] or "memory",
                "buckets": buckets, "keys": keys, "sweeps": self.sweeps,
                "table_bytes": table_bytes}

    # ---- sweeping --------------------------------------------------------------------------

    def handle_info(self, message: Any) -> Any:
        if message == ("$sweep",):
            self._arm_sweep()
            if self.tables is not None:
                with self.tables.control:
                    removed = self.tables.sweep(time.time_ns())
                if removed is None:
                    return None  # nothing can have expired yet: not a sweep
            elif self.buckets is not None:
                removed = self.buckets.sweep(time.time_ns())
            else:
                return None
            self.sweeps += 1
            if removed:
                self.log.debug("rate limiter buckets expired", removed=removed)
        return None

    def terminate(self, reason: Any) -> None:
        if self.tables is not None:
            # Callers that look next reconnect (to a replacement, if any);
            # the table's memory goes now.
            with self.tables.control:
                self.tables.control.words[C_RETIRED] = 1
                self.tables.close()

    def _arm_sweep(self) -> None:
        otpy.send_after(otpy.self(), ("$sweep",), self.options["cleanup_interval"])


# ---- the handle ---------------------------------------------------------------------------

class SharedBuckets:
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
            except LockTimeout as exc:
                raise LimiterBusy(str(exc)) from None
            except TableGone:
                deadline = self._wait_for_table(deadline)
                continue
            if outcome is not GROW:
                allowed, used, remaining, retry_ns, reset_ns = outcome
                return _decision((allowed, used, remaining, retry_ns / 1e9, reset_ns / 1e9))
            # the table is half full: the owner doubles it (once, however many ask)
            self.owner.ask(("grow", self.control.gen), self.timeout)

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


class CalledBuckets:
    """Buckets the owner holds (sliding window): every hit is a call. The
    owner raises Retired if it holds none (a new limiter of that name, not in
    this mode): the handle attaches again."""

    def __init__(self, owner: OwnerLink, timeout: float) -> None:
        self.owner = owner
        self.timeout = timeout
        self.dead = False

    def hit(self, key: Any, limit: int, window: float, window_ns: int, cost: int,
            count: bool) -> Decision:
        allowed, used, remaining, retry_ns, reset_ns = self.owner.ask(
            ("hit", key, limit, window_ns, cost, count), self.timeout)
        return Decision(allowed, used, remaining, retry_ns / 1e9, reset_ns / 1e9)

    def reset(self, key: Any) -> int:
        return self.owner.ask(("reset", key), self.timeout)

    def retire(self) -> None:
        self.dead = True

    def close(self) -> None:
        """Nothing to let go of."""


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
        check_key(key)
        if type(limit) is not int or type(cost) is not int or not 1 <= limit <= MAX_LIMIT \
                or not 1 <= cost <= MAX_LIMIT:
            _check_limit(limit, cost)
        if type(window) is float and 0.0 < window < 1e10:
            window_ns = round(window * 1_000_000_000) or 1
        else:
            window_ns = _window_ns(window)
        backend = self._conn
        if backend.dead:
            backend = self._connection()
        try:
            return backend.hit(key, limit, window, window_ns, cost, count)
        except Retired:  # stopped, or restarting: find the owner again
            self._forget()
            return self._connection().hit(key, limit, window, window_ns, cost, count)

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

    def acquire(self, key: Any, limit: int, window: float, cost: int = 1,
                timeout: float = 5.0) -> Decision:
        """Wait until a hit is allowed (the Decision that admitted it), or raise
        RateLimited at once when it cannot be within ``timeout`` seconds (None
        or ``math.inf``: as long as it takes)."""
        seconds = checks.seconds(timeout, "acquire timeout", zero=True)
        deadline = math.inf if seconds is None else time.monotonic() + seconds
        while True:
            decision = self.hit(key, limit, window, cost)
            if decision.allowed:
                return decision
            left = deadline - time.monotonic()
            if cost > limit or decision.retry_after > left:
                raise RateLimited(decision.retry_after, decision)
            time.sleep(decision.retry_after)  # the quota comes back with time, nothing else

    def stats(self) -> dict[str, Any]:
        """algorithm, storage, buckets and keys held (None with Redis), sweeps
        done, table_bytes (the shared table's size; None unless it has one)."""
        return self._ask("stats")

    # ---- this process's connection ------------------------------------------------------

    def _connect(self, owner: OwnerLink) -> Any:
        how = owner.ask(("attach",), self.timeout)
        if how[0] == "shared":
            return SharedBuckets(how[1], how[2], owner, self.timeout)
        if how[0] == "call":
            return CalledBuckets(owner, self.timeout)
        return RedisBuckets(how[1], how[2], self.name, owner)
