"""CircuitBreaker: one breaker state shared by every process of the node.

Who does what (see docs/breaker_and_limiter.md for the reasoning):

- ``start_link`` starts a supervisor of the breaker's own. Its child, the
  *owner* (a GenServer registered under the breaker's name), runs the state
  machine (``_breaker_machine``), stamps time, arms the half-open timer, and
  publishes the state into a shared page.
- The page is a memfd *held by that supervisor* (it is created inside the
  owner's start function, which runs in the supervisor's process), so it
  survives an owner SIGKILL: the replacement resumes from the snapshot the
  owner keeps in it, and every mapping stays valid.
- A handle (``CircuitBreaker("db")``, picklable) maps the page once per
  process. A closed call reads one word, bumps this process's counter slot and
  runs: no message, no lock. A failure is a synchronous call to the owner, so
  the next read anywhere reflects it. Half-open trial slots are granted by the
  owner; trial outcomes go back to it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import pickle
import random
import struct
import threading
import time
from typing import Any, Callable, NamedTuple, TypeVar

import otpy
from otpy import ChildSpec, Down, GenServer, Pid, StartError, AlreadyStarted
from otpy import lowlevel

from . import _checks as checks
from ._errors import BreakerNotRunning, BreakerTimeout, CircuitOpen
from ._breaker_machine import CLOSED, DISABLED, HALF_OPEN, OPEN, BreakerMachine
from ._shared_owner import OwnerLink, handle_timeout
from ._shared_memory import Page, hold

T = TypeVar("T")


# ---- events ------------------------------------------------------------------

class BreakerEvent(NamedTuple):
    """One transition, sent to subscribers: ``time`` in epoch seconds."""

    name: str
    state: str
    previous: str
    time: float


# ---- the shared page ----------------------------------------------------------------------

# Word indexes (int64). Word 0 is the page id written by the holder.
# W_GATE is what the closed path reads: 0 means "closed, no injected
# faults: just run it"; anything else sends the caller down the slow path.
W_GATE, W_STATE, W_FAULT, W_HALF_OPEN_AT, W_SNAPSHOT = 1, 2, 3, 4, 5
CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2, DISABLED: 3}
RETIRED = 4  # the owner stopped: handles must reconnect
NAMES = {code: state for state, code in CODES.items()}
C_CLOSED, C_OPEN, C_DISABLED = CODES[CLOSED], CODES[OPEN], CODES[DISABLED]
assert W_GATE == 1  # CircuitBreaker.call reads words[1] as a constant

# Counter slots, one per process that uses the breaker: successes, rejected,
# "neither" (an ignored or unlisted exception). One writer each (that
# process), read by the owner for stats(). Calls are their sum plus the
# failures reported, so the closed path bumps a single counter.
SLOT_BASE = 16
SLOTS = 4096
SLOT_WIDTH = 3
VOID_SLOT = SLOTS  # past the last real slot: where processes beyond SLOTS write
HEADER_BYTES = -(-(SLOT_BASE + SLOT_WIDTH * (SLOTS + 1)) * 8 // 4096) * 4096
SNAPSHOT_BYTES = 1 << 20  # two halves, written alternately
PAGE_BYTES = HEADER_BYTES + 2 * SNAPSHOT_BYTES
_LENGTH = struct.Struct("<Q")
FAULT_SCALE = 1_000_000_000

DEFAULT_TIMEOUT = 5.0


def _slot_words(slot: int) -> tuple[int, int, int]:
    base = SLOT_BASE + SLOT_WIDTH * slot
    return base, base + 1, base + 2


# ---- options ------------------------------------------------------------------------------

def check_options(max_failures: int = 5, window: float = 10.0, reset_after: float = 30.0,
                  half_open_calls: int = 1, success_threshold: int = 1,
                  failure_on: Any = (Exception,), ignore: Any = (),
                  fault_rate: float = 0.0) -> dict[str, Any]:
    """The options, checked; ValueError/TypeError naming the bad one."""
    return {
        "max_failures": checks.count(max_failures, "max_failures", minimum=1),
        "window": checks.finite_seconds(window, "window"),
        "reset_after": checks.finite_seconds(reset_after, "reset_after"),
        "half_open_calls": checks.count(half_open_calls, "half_open_calls", minimum=1),
        "success_threshold": checks.count(success_threshold, "success_threshold", minimum=1),
        "failure_on": checks.exceptions(failure_on, "failure_on"),
        "ignore": checks.exceptions(ignore, "ignore"),
        "fault_rate": checks.ratio(fault_rate, "fault_rate"),
    }


# ---- the owner ------------------------------------------------------------------------------

def _start_owner(name: str, options: dict[str, Any]) -> Pid | None:
    """The owner's start function. It runs in the breaker's supervisor, which
    therefore holds the page: a restarted owner gets the same one."""
    page_ref = hold(("breaker", name), PAGE_BYTES, f"otpy-breaker:{name}")
    return BreakerOwner.start_link(name, options, page_ref, otpy.self(), name=name)


def _start_subtree(name: str, options: dict[str, Any]) -> Pid:
    spec = ChildSpec("owner", _start_owner, args=(name, options), shutdown=5.0)
    return otpy.Supervisor.start_link([spec])


class BreakerOwner(GenServer):
    """The process that owns one breaker's state (registered under its name)."""

    def init(self, name: str, options: dict[str, Any], page_ref: tuple[int, int, int],
             supervisor: Pid) -> None:
        otpy.trap_exit(True)  # so terminate runs when the supervisor stops us
        self.name = name
        self.options = options
        self.page_ref = page_ref
        self.supervisor = supervisor
        self.me = otpy.self()
        self.page = Page.open(*page_ref)
        self.words = self.page.words
        self.machine = BreakerMachine(options["max_failures"], options["window"],
                                      options["reset_after"], options["half_open_calls"],
                                      options["success_threshold"])
        self.slots: dict[Pid, int] = {}
        self.retired = [0, 0, 0]  # counters of processes gone: successes, rejected, neither
        self.melts = 0
        self.subscribers: set[Pid] = set()
        self.watched: set[Pid] = set()
        self.timer: otpy.Ref | None = None
        self.log = lowlevel.logger(breaker=name)
        snapshot = self._load()
        if snapshot is not None:
            self.machine.restore(snapshot["machine"])
            self.slots = snapshot["slots"]
            self.retired = snapshot["retired"]
            self.melts = snapshot["melts"]
            self.subscribers = set(snapshot["subscribers"])
            for pid in [*self.slots, *self.subscribers, *(t[0] for t in self.machine.trials)]:
                self._watch(pid)  # a dead one gives a Down at once: handled as usual
            self.log.info("circuit breaker owner resumed", state=self.machine.state)
        self.words[W_FAULT] = round(options["fault_rate"] * FAULT_SCALE)
        self._publish()
        self._arm_timer()

    def handle_call(self, request: Any, caller: lowlevel.From) -> Any:
        result = lowlevel.dispatch(self, request)
        self._publish()
        return result

    def handle_info(self, message: Any) -> Any:
        if type(message) is tuple and message[:1] == ("$half_open",):
            if message[1] == self.machine.gen:
                self.timer = None
                self.machine.on_timer(message[1])
                if self.machine.gen == message[1]:
                    self._arm_timer()  # fired a hair early: wait out the rest
                self._publish()
        elif type(message) is Down and message.pid in self.watched:
            self._gone(message.pid)
            self._publish()
        return None

    def terminate(self, reason: Any) -> None:
        # Handles that look next reconnect; a replacement (if the supervisor
        # starts one) publishes the real state again.
        self.words[W_STATE] = RETIRED
        self.words[W_GATE] = 1

    # ---- operations (lowlevel.dispatch) ----------------------------------------------------

    def _op_attach(self, pid: Pid) -> dict[str, Any]:
        slot = self.slots.get(pid)
        if slot is None:
            used = set(self.slots.values())
            slot = next((i for i in range(SLOTS) if i not in used), VOID_SLOT)
            if slot == VOID_SLOT:
                self.log.warning("circuit breaker has no counter slot left", pid=repr(pid))
            else:
                self.slots[pid] = slot
            self._watch(pid)
        return {"page": self.page_ref, "slot": slot, "failure_on": self.options["failure_on"],
                "ignore": self.options["ignore"]}

    def _op_failure(self, trial: Any) -> str:
        self.machine.failure(trial)
        return self.machine.state

    def _op_success(self, trial: Any) -> str:
        self.machine.success(trial)
        return self.machine.state

    def _op_release(self, trial: Any) -> None:
        self.machine.release(trial)

    def _op_trial(self, trial: Any) -> tuple[str, Any]:
        """("run", None) if closed by now, ("trial", None) if granted,
        else ("reject", retry_after)."""
        m = self.machine
        if m.try_trial(trial):
            return ("trial", None)
        if m.state == CLOSED:
            return ("run", None)
        return ("reject", m.retry_after())

    def _op_melt(self) -> str:
        self.melts += 1
        self.machine.melt()
        return self.machine.state

    def _op_reset(self) -> str:
        self.machine.reset()
        return self.machine.state

    def _op_disable(self) -> str:
        self.machine.disable()
        return self.machine.state

    def _op_enable(self) -> str:
        self.machine.enable()
        return self.machine.state

    def _op_stats(self) -> dict[str, Any]:
        totals = list(self.retired)
        for slot in self.slots.values():
            for i, word in enumerate(_slot_words(slot)):
                totals[i] += self.words[word]
        m = self.machine
        successes, rejected, neither = totals
        calls = successes + rejected + neither + m.failures - self.melts
        return {"calls": calls, "successes": successes, "failures": m.failures,
                "rejected": rejected, "opened": m.opened, "state": m.state, "since": m.since,
                "failures_in_window": m.failures_in_window()}

    def _op_subscribe(self, pid: Pid) -> None:
        self.subscribers.add(pid)
        self._watch(pid)

    def _op_unsubscribe(self, pid: Pid) -> None:
        self.subscribers.discard(pid)

    def _op_supervisor(self) -> Pid:
        return self.supervisor

    # ---- keeping the page up to date --------------------------------------------------------

    def _watch(self, pid: Pid) -> None:
        if pid not in self.watched:
            self.watched.add(pid)
            otpy.monitor(pid)

    def _gone(self, pid: Pid) -> None:
        """A process that used the breaker exited: keep its counts, free its slot,
        give back its trial slots, forget its subscription."""
        self.watched.discard(pid)
        slot = self.slots.pop(pid, None)
        if slot is not None:
            for i, word in enumerate(_slot_words(slot)):
                self.retired[i] += self.words[word]
                self.words[word] = 0
        for trial in [t for t in self.machine.trials if t[0] == pid]:
            self.machine.release(trial)
        self.subscribers.discard(pid)

    def _publish(self) -> None:
        """Page words, then events, then the snapshot: a caller that gets its
        reply after this reads the new state."""
        m = self.machine
        self.words[W_HALF_OPEN_AT] = (round(m.half_open_at * 1e9)
                                      if m.half_open_at is not None else 0)
        self.words[W_STATE] = CODES[m.state]
        self.words[W_GATE] = 0 if m.state == CLOSED and not self.words[W_FAULT] else 1
        events, m.events = m.events, []
        for state, previous, at in events:
            self.log.info("circuit breaker state changed", state=state, previous=previous)
            event = BreakerEvent(self.name, state, previous, at)
            for pid in self.subscribers:
                otpy.send(pid, event)
        if events:
            self._arm_timer()
        self._save()

    def _arm_timer(self) -> None:
        if self.timer is not None:
            otpy.cancel_timer(self.timer)
            self.timer = None
        m = self.machine
        if m.state == OPEN and m.half_open_at is not None:
            delay = max(0.0, m.half_open_at - time.monotonic())
            self.timer = otpy.send_after(self.me, ("$half_open", m.gen), delay)

    def _save(self) -> None:
        data = pickle.dumps({"machine": self.machine.snapshot(), "slots": self.slots,
                             "retired": self.retired, "melts": self.melts,
                             "subscribers": list(self.subscribers)})
        if _LENGTH.size + len(data) > SNAPSHOT_BYTES:
            self.log.warning("circuit breaker snapshot too large to keep", size=len(data))
            return
        half = 2 if self.words[W_SNAPSHOT] == 1 else 1
        self.page.write(HEADER_BYTES + (half - 1) * SNAPSHOT_BYTES,
                        _LENGTH.pack(len(data)) + data)
        self.words[W_SNAPSHOT] = half  # one word flips: a kill mid-write leaves the old one

    def _load(self) -> dict[str, Any] | None:
        half = self.words[W_SNAPSHOT]
        if half not in (1, 2):
            return None
        offset = HEADER_BYTES + (half - 1) * SNAPSHOT_BYTES
        (length,) = _LENGTH.unpack(self.page.read(offset, _LENGTH.size))
        try:
            return pickle.loads(self.page.read(offset + _LENGTH.size, length))
        except Exception as exc:  # never expected; start afresh rather than not at all
            self.log.error("circuit breaker snapshot unreadable; starting closed", error=repr(exc))
            return None


# ---- the handle ---------------------------------------------------------------------------

class _Connection:
    """This process's view of one breaker: its page mapping and counter slot."""

    __slots__ = ("words", "page", "successes", "rejected", "neither", "failure_on", "ignore",
                 "owner", "me", "tokens", "dead")

    def __init__(self, owner: OwnerLink, me: Pid, timeout: float) -> None:
        info = owner.ask(("attach", me), timeout)
        self.page = Page.open(*info["page"])
        self.words = self.page.words
        self.successes, self.rejected, self.neither = _slot_words(info["slot"])
        self.failure_on = info["failure_on"]
        self.ignore = info["ignore"]
        self.owner = owner
        self.me = me
        self.tokens = itertools.count(1)  # next() is atomic under the GIL
        self.dead = False


class _NotConnected:
    """What a handle holds until it connects: its gate word says "slow path"."""

    words = memoryview(bytearray(8 * SLOT_BASE)).cast("q")
    words[W_GATE] = 1
    dead = True


_NOT_CONNECTED: Any = _NotConnected()
_CONNECTIONS: dict[tuple[str, str, str], _Connection] = {}


def _retire(conn: _Connection) -> None:
    """Send every later use of ``conn`` down the slow path, which reconnects."""
    conn.dead = True
    conn.words = _NOT_CONNECTED.words


def _after_fork() -> None:
    # A forked copy must not share its parent's counter slot: it reconnects.
    for conn in _CONNECTIONS.values():
        _retire(conn)
    _CONNECTIONS.clear()


os.register_at_fork(after_in_child=_after_fork)


class CircuitBreaker:
    """A handle on the breaker registered as ``name``: picklable, usable from
    any process and thread of the node. ``namespace`` defaults to the
    caller's (an isolated tree's, in tests)."""

    __slots__ = ("name", "namespace", "timeout", "_conn", "_local")

    def __init__(self, name: str, *, namespace: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = checks.name(name)
        self.namespace = lowlevel.current_namespace() if namespace is None else namespace
        self.timeout = handle_timeout(timeout)
        self._conn: Any = _NOT_CONNECTED
        self._local: threading.local | None = None

    def __reduce__(self):
        return (_handle, (self.name, self.namespace, self.timeout))

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CircuitBreaker) and other.name == self.name
                and other.namespace == self.namespace)

    def __hash__(self) -> int:
        return hash((self.name, self.namespace))

    # ---- starting ------------------------------------------------------------------------

    @classmethod
    def start_link(cls, name: str, *, max_failures: int = 5, window: float = 10.0,
                   reset_after: float = 30.0, half_open_calls: int = 1,
                   success_threshold: int = 1,
                   failure_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
                   ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
                   fault_rate: float = 0.0) -> "CircuitBreaker":
        """Start the breaker's supervisor (linked to the caller) and owner; a handle.

        ``max_failures`` failures within ``window`` seconds open it; after
        ``reset_after`` seconds it lets ``half_open_calls`` trial calls through;
        ``success_threshold`` successes close it. See the module docs.
        """
        options = check_options(max_failures, window, reset_after, half_open_calls,
                                success_threshold, failure_on, ignore, fault_rate)
        checks.name(name)
        try:
            _start_subtree(name, options)
        except StartError as exc:
            if isinstance(exc.reason, StartError) and isinstance(exc.reason.reason, AlreadyStarted):
                raise exc.reason.reason from None
            if isinstance(exc.reason, AlreadyStarted):
                raise exc.reason from None
            raise
        return cls(name)

    @classmethod
    def child_spec(cls, name: str, *, id: Any = None, restart: Any = "permanent",
                   **options: Any) -> ChildSpec:
        """A spec that runs this breaker (its supervisor and owner) under your supervisor."""
        checks.name(name)
        checked = check_options(**options)
        return ChildSpec(id if id is not None else name, _start_subtree, args=(name, checked),
                         restart=restart, shutdown="infinity", type="supervisor")

    def stop(self) -> None:
        """Stop the breaker's supervisor and owner (under a supervisor of your
        own, that supervisor's restart option decides what happens next)."""
        supervisor = self._owner().ask(("supervisor",), self.timeout)
        otpy.stop(supervisor)
        self._forget()

    # ---- guarding calls -------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` here if the breaker lets it; CircuitOpen if not."""
        conn = self._conn
        words = conn.words
        if not words[1]:  # W_GATE, as a constant: closed, no faults
            # The closed path: one read, and one counter bump in our own slot.
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._failed(conn, exc, None)
                raise
            words[conn.successes] += 1
            return result
        conn, trial = self._admit(conn)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(conn, exc, trial)
            raise
        self._succeeded(conn, trial)
        return result

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:
        """As a decorator: every call of ``fn`` goes through the breaker.

        An ``async def`` or a generator function is refused (TypeError): the
        breaker would see only the coroutine or generator being created, and
        count that as a success, while the work (and its failure) comes later.
        """
        if not callable(fn):
            raise TypeError(f"CircuitBreaker decorates a callable, not {fn!r}")
        if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn) \
                or inspect.isasyncgenfunction(fn):
            raise TypeError(f"CircuitBreaker cannot guard {fn.__qualname__}: it is an async "
                            "def or a generator function, whose work runs after the call "
                            "returns; guard the code that awaits or consumes it instead")

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> T:
            return self.call(fn, *args, **kwargs)
        return guarded

    def __enter__(self) -> "CircuitBreaker":
        conn, trial = self._admit(self._conn)
        local = self._local
        if local is None:
            local = self._local = threading.local()
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append((conn, trial))
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        conn, trial = self._local.stack.pop()  # type: ignore[union-attr]
        if exc is None:
            self._succeeded(conn, trial)
        else:
            self._failed(conn, exc, trial)

    def _admit(self, conn: _Connection) -> tuple[_Connection, Any]:
        """Count the call and decide: run it (trial None), run it as a granted
        half-open trial (its token), or raise CircuitOpen."""
        if conn.dead:
            conn = self._connection()
        words = conn.words
        code = words[W_STATE]
        if code == RETIRED:
            conn = self._reconnect(conn)
            words = conn.words
            code = words[W_STATE]
        if code == C_CLOSED:
            fault = words[W_FAULT]
            if fault and random.random() * FAULT_SCALE < fault:
                self._reject(conn, 0.0)
            return conn, None
        if code == C_DISABLED:
            self._reject(conn, None)
        if code == C_OPEN:
            left = words[W_HALF_OPEN_AT] - time.monotonic_ns()
            if left > 0:
                self._reject(conn, left / 1e9)
        # half-open, or open and due: the owner decides who gets a trial slot
        trial = (conn.me, next(conn.tokens))
        verdict, retry_after = conn.owner.ask(("trial", trial), self.timeout)
        if verdict == "trial":
            return conn, trial
        if verdict == "run":
            return conn, None
        self._reject(conn, retry_after)
        raise AssertionError("unreachable")

    def _reject(self, conn: _Connection, retry_after: float | None) -> None:
        conn.words[conn.rejected] += 1
        raise CircuitOpen(self.name, retry_after)

    def _succeeded(self, conn: _Connection, trial: Any) -> None:
        conn.words[conn.successes] += 1
        if trial is not None:
            self._report(conn, ("success", trial))

    def _failed(self, conn: _Connection, exc: BaseException, trial: Any) -> None:
        if isinstance(exc, conn.ignore) or not isinstance(exc, conn.failure_on):
            conn.words[conn.neither] += 1
            if trial is not None:
                self._report(conn, ("release", trial))  # neither failure nor success
            return
        self._report(conn, ("failure", trial))

    def _report(self, conn: _Connection, request: tuple) -> None:
        """Tell the owner an outcome, synchronously. If it cannot be reached
        the guarded call's own result or exception still reaches the caller."""
        try:
            conn.owner.ask(request, self.timeout)
        except BreakerNotRunning as exc:
            lowlevel.logger(breaker=self.name).warning(
                "circuit breaker outcome not recorded", outcome=request[0], error=str(exc))

    # ---- the operator's commands ------------------------------------------------------------

    @property
    def state(self) -> str:
        """"closed", "open", "half_open" or "disabled", read from the shared page."""
        conn = self._conn
        if conn.dead:
            conn = self._connection()
        code = conn.words[W_STATE]
        if code == RETIRED:
            code = self._reconnect(conn).words[W_STATE]
        return NAMES.get(code, "closed")

    def melt(self) -> str:
        """Record one failure without a call; the state after it."""
        return self._owner().ask(("melt",), self.timeout)

    def reset(self) -> str:
        """Close now, failures forgotten, pending timer cancelled (not while disabled)."""
        return self._owner().ask(("reset",), self.timeout)

    def disable(self) -> str:
        """Hold it open, whatever happens, until enable()."""
        return self._owner().ask(("disable",), self.timeout)

    def enable(self) -> str:
        """Undo disable(): closed, failures forgotten. Nothing if not disabled."""
        return self._owner().ask(("enable",), self.timeout)

    def stats(self) -> dict[str, Any]:
        """calls (rejected included), successes, failures (melts included),
        rejected, opened, state, since (epoch seconds of the last transition),
        failures_in_window."""
        return self._owner().ask(("stats",), self.timeout)

    def subscribe(self) -> None:
        """Send the calling process a BreakerEvent at every transition."""
        self._owner().ask(("subscribe", otpy.self()), self.timeout)

    def unsubscribe(self) -> None:
        self._owner().ask(("unsubscribe", otpy.self()), self.timeout)

    # ---- connections --------------------------------------------------------------------------

    def _key(self) -> tuple[str, str, str]:
        return (otpy.self().node, self.namespace, self.name)

    def _owner(self) -> OwnerLink:
        conn = self._conn
        if not conn.dead:
            return conn.owner
        return OwnerLink(self.name, self.namespace, "circuit breaker", BreakerNotRunning,
                         BreakerTimeout)

    def _connection(self) -> _Connection:
        key = self._key()
        conn = _CONNECTIONS.get(key)
        if conn is None or conn.dead:
            owner = OwnerLink(self.name, self.namespace, "circuit breaker", BreakerNotRunning,
                         BreakerTimeout)
            conn = _CONNECTIONS[key] = _Connection(owner, otpy.self(), self.timeout)
        self._conn = conn
        return conn

    def _reconnect(self, conn: _Connection) -> _Connection:
        """The owner retired: attach again (waiting out a restart, within the timeout)."""
        _retire(conn)
        self._conn = _NOT_CONNECTED
        return self._connection()

    def _forget(self) -> None:
        conn = self._conn
        if not conn.dead:
            _retire(conn)
            _CONNECTIONS.pop(self._key(), None)
        self._conn = _NOT_CONNECTED


def _handle(name: str, namespace: str, timeout: float) -> CircuitBreaker:
    return CircuitBreaker(name, namespace=namespace, timeout=timeout)
