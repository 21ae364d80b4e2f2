"""The pool's bookkeeping, pure: no processes, no messages, no clock.

``PoolBook`` holds what the pool's server knows (its workers and their
state, the idle order, the callers waiting, the checkouts, the sessions and
their replay logs, the counters, the workers owed and the backoff of their
starts) and changes it only through *events*, methods that return
*effects*: what the server must do (start a worker, kill one, reply to a
caller, cast to a worker, arm a timer, publish a PoolEvent, take a worker's
Down now). ``PoolServer`` is the shell that turns messages into events and
effects into messages; the property tests drive a book alone, with every
interleaving of events, and check ``invariants()`` after each one
(``tests/unit/test_pool_book.py``).

A worker's life, as the book sees it (``WorkerRecord.state``)::

                          owed (size not reached: a death, a retirement, a start
                            |  that failed, retried with backoff)
                            | Start effect: one start at a time (``starting``)
                            v
      start failed <--- (starting) --worker up--> IDLE <---- adopted by a new server
      (owed again)                              |  ^
                                       checkout |  | checkin (return)
                                                v  |
                                                HELD
      IDLE, HELD --retire (recycled, health, worn, idle overflow)--> RETIRING_HELD if held,
                                                                     else RETIRING (told LEAVE)
      RETIRING_HELD --last checkin--> RETIRING (told LEAVE; killed if its state is unknown)
      IDLE, HELD, RETIRING* --command deadline--> KILLED
      IDLE, HELD --health check hangs, checkout replaced--> RETIRING (killed)
      any state --Down--> gone (IDLE/HELD: a crash, counted and replaced)

"In service" is IDLE or HELD: only those hold sessions, are bound to, are
checked out or checked. A worker has ``opts.max_concurrency`` *slots* (1
unless its class runs ``async def`` commands): it may be checked out that
many times at once, each checkout one holder; it is HELD while it has a
holder, and in the *free order* (``idle``, which LIFO/FIFO picks from)
while it is in service with a slot free. With one slot, the free order is
exactly the IDLE workers. A worker running a bound session's command is IDLE
here: those commands bypass the server (its counts page says whether it is
running one); so is one a caller claimed for a session-less command (see
_claims), until the server, taking the claims back before a checkout, finds
it claimed: then it is HELD under ``claim_token(pid)`` until the claim ends
(``claimed``, ``released``). Retiring and killed workers are *leaving*: their Down is
planned, their replacement (if owed) was decided when they left service.

Invariants (``invariants()``):

- one state per worker: the free order holds exactly the workers in service
  with a slot free, once each; a worker has holders iff it is HELD or
  RETIRING_HELD, never more than its slots, and the checkouts are exactly
  the holders of the workers; only a RETIRING_HELD worker waits to be
  killed at its last checkin;
- a session is bound to a worker in service that lists it, or to none;
  leaving workers hold no session;
- no lost waiter: a queued caller is never left while a worker is idle; a
  caller is in at most one of the queue, the checkouts and the pending
  start; a bind waits only on a pending start, a reply owed at a Down only
  on a worker still there;
- the counts add up: the pending start, if it fills what is owed, is
  counted in ``owed``; regular workers in service plus those owed never
  exceed the pool's size (exactly the size, unless lazy); overflow workers
  never exceed ``max_overflow``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import random
from typing import Any, Callable, NamedTuple

from otpy import lowlevel

from ._errors import PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable, SessionNotFound
from ._pool_options import Options, PoolStatus
from ._protocol import (BIND_SESSION, END, ERROR, EXPIRE, FILL, HEALTH, HEALTH_LATE, HEALTH_TICK,
                        LEAVE, OK, OVERFLOW_IDLE, RELEASE, REPLACE, RETIRED, RETRY_START, RETURN,
                        DEAD, UNKNOWN)

IDLE, HELD = "idle", "held"
RETIRING_HELD, RETIRING, KILLED = "retiring_held", "retiring", "killed"
STATES = (IDLE, HELD, RETIRING_HELD, RETIRING, KILLED)
IN_SERVICE = (IDLE, HELD)
LEAVING = (RETIRING_HELD, RETIRING, KILLED)

# A replacement's start (its init: milliseconds) waits this long after a death,
# so that the dead worker's callers, whose questions ("was mine running?")
# reach the server a fraction of a millisecond after its Down, are answered
# first: their WorkerCrashed or retry must not wait for an init.
FILL_GRACE = 0.002
DEATHS_KEPT = 256  # dead workers whose running command callers may still ask about


# ---- effects: what the server does for the book ------------------------------------------

class Start(NamedTuple):
    """Start a worker (child id ``("worker", key)``); answer with worker_up or start_failed."""
    key: int
    overflow: bool


class Kill(NamedTuple):
    """Kill a worker on purpose: ``lowlevel.kill(pid, ("shutdown", why))``."""
    pid: Any
    why: str


class Reply(NamedTuple):
    caller: Any  # an otpy.From
    answer: tuple  # (OK, value) or (ERROR, exception)


class Cast(NamedTuple):
    pid: Any
    message: tuple


class Timer(NamedTuple):
    """Send ``message`` to the server after ``delay`` s; ``key``: to cancel it."""
    message: tuple
    delay: float
    key: Any = None


class CancelTimer(NamedTuple):
    key: Any


class Watch(NamedTuple):
    """Monitor a caller (once: kept until it dies); its death is caller_down."""
    pid: Any


class Emit(NamedTuple):
    """Publish a PoolEvent (and log it)."""
    kind: str
    worker: Any
    session: Any = None
    detail: Any = None


class AwaitDown(NamedTuple):
    """Take this worker's Down now (it is dead, or killed): worker_down, or
    down_late if it does not come within the server's wait."""
    pid: Any


# ---- what the book records -------------------------------------------------------------------

class Reading(NamedTuple):
    """A worker's counts page, read by the server (see _counters)."""
    ran: int
    failed: int
    running: tuple  # the running commands' refs, each (origin serial, number)
    uncounted: int  # commands running and not counted yet


class Waiter(NamedTuple):
    caller: Any  # an otpy.From
    token: Any
    wait: float | None  # None: no limit (and no timer)


class Starting(NamedTuple):
    """The one start under way: whether it fills what is owed, and the
    checkout it was started for (None: it serves the queue, or a bind)."""
    key: int
    overflow: bool
    fill: bool
    waiter: Waiter | None


class WorkerRecord:
    """The book's record of one worker."""

    __slots__ = ("pid", "overflow", "state", "sessions", "holders", "idle_stamp", "health_token",
                 "health_mark", "kill_when_free")

    def __init__(self, pid: Any, overflow: bool) -> None:
        self.pid = pid
        self.overflow = overflow
        self.state = IDLE
        self.sessions: set = set()
        self.holders: set = set()  # the checkout tokens while HELD or RETIRING_HELD
        self.idle_stamp = 0  # an overflow worker's last return: its idle timer's stamp
        self.health_token: Any = None  # the health check awaiting an answer
        self.health_mark = 0  # its command count when that check was sent
        self.kill_when_free: str | None = None  # RETIRING_HELD: killed (why) at its last checkin

    def __repr__(self) -> str:
        return f"<worker {self.pid!r} {self.state}{' overflow' if self.overflow else ''}>"


def _event(method: Callable) -> Callable:
    """An event: returns the effects its method appended to ``self.out``.
    An event handled inside another adds to that one's effects."""

    @functools.wraps(method)
    def run(self: "PoolBook", *args: Any) -> list:
        if self.out is not None:
            method(self, *args)
            return []
        self.out = out = []
        try:
            method(self, *args)
        finally:
            self.out = None
        return out

    return run


def claim_token(pid: Any) -> tuple:
    """The holder token of a worker a caller claimed (see ``PoolBook.claimed``)."""
    return ("claim", pid)


class PoolBook:
    """The pool's state and its rules; see the module's docstring."""

    def __init__(self, opts: Options, first_key: int = 1, rng: random.Random | None = None) -> None:
        self.opts = opts
        self.rng = rng or random.Random()
        self.out: list | None = None
        self.keys = itertools.count(first_key)
        self.stamps = itertools.count(1)
        self.workers: dict[Any, WorkerRecord] = {}  # in start order
        self.slots: int = opts.max_concurrency  # checkouts one worker takes at once
        self.idle: collections.deque = collections.deque()  # the free order
        self.queue: collections.deque[Waiter] = collections.deque()
        self.checkouts: dict[Any, tuple[Any, Any]] = {}  # token -> (worker, holder's pid)
        self.sessions: dict[Any, Any] = {}  # session -> its worker (None: re-bind)
        self.replay_logs: dict[Any, list] = {}
        self.starting: Starting | None = None
        self.binds_waiting: list[tuple] = []  # (caller, session, stale): for the start
        self.at_down: dict[Any, list[tuple]] = {}  # worker -> what to do at its Down
        # dead worker -> the refs of the commands it was running, or UNKNOWN
        self.died_running: dict[Any, Any] = {}
        self.in_flight: dict[Any, int] = {}  # worker -> commands running, at the last bind
        self.adopted = 0  # regular workers a replaced server left (may exceed size)
        # Degraded, never dead: regular workers owed (a death, a retirement, a
        # start that failed) are started again and again, with backoff.
        self.owed = 0
        self.start_failures = 0  # in a row
        self.last_start_error: BaseException | None = None
        self.retry_armed = False
        self.fill_armed = False
        self.counts = dict(total_commands=0, errors=0, timeouts=0, worker_restarts=0,
                           sessions_recovered=0, sessions_lost=0)

    # ---- reading (no effects) ------------------------------------------------------------

    def regular_in_service(self) -> int:
        return sum(1 for w in self.workers.values() if not w.overflow and w.state in IN_SERVICE)

    def overflow_count(self) -> int:
        """Overflow workers alive (leaving ones too) and starting."""
        starting = self.starting is not None and self.starting.overflow
        return sum(1 for w in self.workers.values() if w.overflow) + starting

    def status(self, readings: list[Reading | None], claimed: int = 0) -> PoolStatus:
        """``readings``: the live workers' counts pages, read now, in the
        order of ``workers``; ``claimed``: the free workers callers hold by
        a claim now (busy, though the book has them idle)."""
        counts = dict(self.counts)
        for reading in readings:
            if reading is not None:
                counts["total_commands"] += reading.ran
                counts["errors"] += reading.failed
        in_flight = {pid: _in_flight(reading) for pid, reading in zip(self.workers, readings)}
        return PoolStatus(size=self.opts.size, overflow=self.overflow_count(),
                          idle=len(self.idle) - claimed, busy=len(self.checkouts) + claimed,
                          queued=len(self.queue),
                          sessions=len(self.sessions), workers=len(self.workers),
                          starting=self.owed,
                          degraded=self.owed > 0 and self.start_failures > 0,
                          in_flight=in_flight, **counts)

    def label(self) -> str:
        """The server's BEHAVIOUR column in the observer."""
        label = f"otpy_pool.Pool in use {len(self.checkouts)}/{len(self.workers)}"
        return label + (f" queued {len(self.queue)}" if self.queue else "")

    # ---- workers coming and going -----------------------------------------------------------

    def adopt(self, pid: Any, sessions: dict, reading: Reading | None) -> None:
        """A replaced server's worker, alive, taken over with its sessions.
        Its counts so far were the old server's: this one counts from now."""
        w = self.workers[pid] = WorkerRecord(pid, overflow=False)
        self.adopted += 1
        if reading is not None:
            self.counts["total_commands"] -= reading.ran
            self.counts["errors"] -= reading.failed
        for sid, log in sessions.items():
            self.sessions[sid] = pid
            w.sessions.add(sid)
            if log:
                self.replay_logs[sid] = log
        self.idle.append(pid)

    @_event
    def begin(self) -> None:
        """The server starts: an eager pool starts the workers it lacks."""
        if not self.opts.lazy:
            self.owed = max(0, self.opts.size - self.regular_in_service())
        self._fill()

    @_event
    def worker_up(self, key: int, pid: Any) -> None:
        start = self.starting
        if start is None or start.key != key:
            start = Starting(key, False, False, None)  # not asked for: a regular worker
        self.starting = None
        self.start_failures = 0
        w = self.workers[pid] = WorkerRecord(pid, start.overflow)
        self._emit("worker_started", pid, detail="overflow" if start.overflow else None)
        if start.fill:
            self.owed -= 1
        if start.waiter is not None:
            self._give(w, start.waiter)
        else:
            self._make_idle(w)
        self._rerun_binds(may_start=True)
        self._fill()
        self._serve_queue()

    @_event
    def start_failed(self, key: int, error: BaseException) -> None:
        start = self.starting or Starting(key, False, False, None)
        self.starting = None
        self.start_failures += 1
        self.last_start_error = error
        self._emit("worker_start_failed", None, detail=error)
        if start.waiter is not None:
            self._queue_or_refuse(start.waiter)
        self._rerun_binds(may_start=False)
        if start.fill:  # retried later, while the live workers serve
            self._retry_later()
            self._refuse_waiters()
            self._serve_queue()
        elif self.idle:  # a worker came back while the start was under way
            self._serve_queue()

    @_event
    def worker_down(self, pid: Any, reason: Any, final: Reading | None) -> None:
        """A worker is gone; ``final``: its counts page, read after its death."""
        w = self.workers.pop(pid, None)
        if w is None:
            return
        self._fold(pid, final)
        self._take_out_of_service(w)
        self._emit("worker_exited", pid, detail=lowlevel.describe_reason(reason))
        if w.state in IN_SERVICE:  # a crash; or an exit an earlier server planned
            if reason != RETIRED:
                self.counts["worker_restarts"] += 1
            self._owe(w)
        elif w.state == KILLED:  # its replacement, owed since the kill, starts now
            self._fill_soon()
        for action in self.at_down.pop(pid, ()):
            self._at_down(pid, action)
        self._serve_queue()

    @_event
    def down_late(self, pid: Any) -> None:
        """The worker's Down did not come within the server's wait: nobody can
        tell what it ran, and whoever waited for its Down is answered now."""
        for action in self.at_down.pop(pid, ()):
            self._at_down(pid, action)

    @_event
    def fill_due(self) -> None:
        """FILL_GRACE after a death (FILL), or a retry after failed starts (RETRY_START)."""
        self.fill_armed = False
        self._fill()
        self._serve_queue()

    @_event
    def retry_due(self) -> None:
        self.retry_armed = False
        self._fill()
        self._serve_queue()

    # ---- checkouts --------------------------------------------------------------------------

    @_event
    def checkout(self, caller: Any, token: Any, wait: float | None) -> None:
        w = self._take_idle()
        if w is not None:
            self._give(w, Waiter(caller, token, wait))
            return
        overflow = self._growth()
        if overflow is not None:
            self._start(overflow, fill=False, waiter=Waiter(caller, token, wait))
        else:
            self._queue_or_refuse(Waiter(caller, token, wait))

    @_event
    def checkin(self, token: Any, how: str) -> None:
        self._checkin(token, how)

    @_event
    def claimed(self, pids: list) -> None:
        """Free workers a caller holds by a claim (see _claims: the server
        could not take their slots back): held under ``claim_token(pid)``
        until ``released``, as a checkout without a caller to answer."""
        for pid in pids:
            w = self.workers.get(pid)
            if w is not None and w.state == IDLE and pid in self.idle:
                self.idle.remove(pid)
                w.state = HELD
                w.holders.add(claim_token(pid))
                self.checkouts[claim_token(pid)] = (pid, None)

    @_event
    def released(self, pid: Any) -> None:
        """The claim on ``pid`` is over (its caller released it, or died)."""
        self._checkin(claim_token(pid), RETURN)

    @_event
    def cancel(self, token: Any) -> None:
        """A caller gave up waiting (its own timer): out of the queue, or, if
        the answer crossed the cancel, the worker it was given returns."""
        if self._drop_waiter(token) is None:
            self._checkin(token, RETURN)

    @_event
    def expire(self, token: Any) -> None:
        waiter = self._drop_waiter(token)
        if waiter is not None:
            self.counts["timeouts"] += 1
            self._emit("timeout", None, detail="checkout")
            self._reply(waiter.caller, ERROR, PoolTimeout(
                f"no worker of pool {self.opts.name!r} became free in time"))

    @_event
    def caller_down(self, pid: Any) -> None:
        """A caller died: what it held is replaced (its state is unknown),
        its place in the queue dropped."""
        for token in [t for t, (_, holder) in self.checkouts.items() if holder == pid]:
            self._checkin(token, REPLACE)
        for waiter in [w for w in self.queue if w.caller.pid == pid]:
            self._drop_waiter(waiter.token)
        start = self.starting
        if start is not None and start.waiter is not None and start.waiter.caller.pid == pid:
            self.starting = start._replace(waiter=None)

    # ---- sessions ----------------------------------------------------------------------------

    @_event
    def bind(self, caller: Any, sid: Any, stale: Any, stale_dead: bool,
             in_flight: dict[Any, int] | None = None) -> None:
        """The session's worker for ``caller``; ``stale``: a worker that did
        not hold it (``stale_dead``: the caller saw it die: its Down first).
        ``in_flight``: each worker's commands running now (its counts page),
        which a new session's least-loaded worker is chosen by."""
        if in_flight is not None:
            self.in_flight = in_flight
        if stale_dead and stale in self.workers:
            self._after_down(stale, ("bind", caller, sid, stale))
            return
        self._bind(caller, sid, stale, may_start=True)

    @_event
    def end_session(self, caller: Any, sid: Any) -> None:
        if sid not in self.sessions:
            self._reply(caller, ERROR, SessionNotFound(
                f"pool {self.opts.name!r} has no session {sid!r}"))
            return
        pid = self.sessions.pop(sid)
        self.replay_logs.pop(sid, None)
        if pid is not None and pid in self.workers:
            self.workers[pid].sessions.discard(sid)
            self._cast(pid, END, sid)
        self._reply(caller, OK, None)

    @_event
    def logged(self, pid: Any, sid: Any, entry: tuple) -> None:
        """A replay=True command ran on ``pid``: the session's log grows (unless
        the session moved on from that worker meanwhile)."""
        if self.sessions.get(sid, False) in (pid, None):
            self.replay_logs.setdefault(sid, []).append(entry)

    @_event
    def replayed(self, pid: Any, sid: Any, cause: Any) -> None:
        if cause is None:
            self.counts["sessions_recovered"] += 1
            self._emit("session_recovered", pid, sid)
        else:
            self.counts["sessions_lost"] += 1
            self.replay_logs.pop(sid, None)
            self._emit("session_lost", pid, sid, detail=cause)

    # ---- commands -----------------------------------------------------------------------------

    @_event
    def ran(self, caller: Any, pid: Any) -> None:
        """Which command the dead worker was running (its Down is taken first)."""
        if pid in self.workers:
            self._after_down(pid, ("ran", caller))
        else:
            self._reply(caller, OK, self.died_running.get(pid, UNKNOWN))

    @_event
    def deadline(self, caller: Any, pid: Any) -> None:
        """A command ran past its timeout: the worker is killed, counted as a
        restart and replaced after its Down, which the caller's answer waits for."""
        self.counts["timeouts"] += 1
        self._emit("timeout", pid, detail="command")
        w = self.workers.get(pid)
        if w is None:
            self._reply(caller, OK, None)
            return
        if w.state != KILLED:
            self.counts["worker_restarts"] += 1
            if w.state in IN_SERVICE:
                self._owe(w, now=False)
            self._take_out_of_service(w)
            w.state = KILLED
            self.out.append(Kill(pid, "command_timeout"))
        self._after_down(pid, ("deadline", caller))

    @_event
    def timed_out(self, pid: Any) -> None:
        """A worker cancelled a command past its deadline, which ended in
        time: counted as a timeout; the worker serves on."""
        self.counts["timeouts"] += 1
        self._emit("timeout", pid, detail="command")

    # ---- retiring --------------------------------------------------------------------------------

    @_event
    def worn(self, pid: Any) -> None:
        """Past max_commands or max_memory."""
        w = self.workers.get(pid)
        if w is not None:
            self._retire(w)

    @_event
    def healthy(self, pid: Any, token: Any, healthy: bool, detail: Any) -> None:
        w = self.workers.get(pid)
        if w is not None and w.health_token == token:
            w.health_token = None
            if not healthy:
                self._emit("health_failed", pid, detail=detail)
                self._retire(w)

    @_event
    def health_tick(self, readings: dict[Any, Reading | None]) -> None:
        """Check the workers in service not running a command (their counts
        pages say; a checked-out worker between commands is idle too). A busy
        worker is never checked: a command that hangs is command_timeout's
        business, not the health check's."""
        for w in self.workers.values():
            reading = readings.get(w.pid)
            if w.state in IN_SERVICE and w.health_token is None and not _busy(reading):
                w.health_token = next(self.stamps)
                w.health_mark = _ran(reading)
                self._cast(w.pid, HEALTH, w.health_token)
                self._health_timer(w)
        assert self.opts.health_interval is not None  # ticks only run with it set
        self.out.append(Timer((HEALTH_TICK,), self.opts.health_interval))

    @_event
    def health_late(self, pid: Any, token: Any, reading: Reading | None) -> None:
        """No answer within health_timeout. A command that came after the
        check (a bound session's, which bypasses the server) runs before it:
        if the worker is running one, or ran some since, the check is still
        queued behind them, and gets another health_timeout. Else the check
        itself hangs: the worker is replaced."""
        w = self.workers.get(pid)
        if w is None or w.health_token != token:
            return
        mark = _ran(reading)
        if _busy(reading) or mark != w.health_mark:
            w.health_mark = mark
            self._health_timer(w)
            return
        self._emit("health_failed", pid, detail="no answer")
        self._retire(w, kill="health_check_timeout")

    @_event
    def overflow_idle(self, pid: Any, stamp: int) -> None:
        """An overflow worker idle for overflow_idle since ``stamp``: retired
        (without an event), unless it holds sessions."""
        w = self.workers.get(pid)
        if w is not None and w.state == IDLE and w.idle_stamp == stamp and not w.sessions:
            self._retire(w, event=None)

    # ---- the rules (inside events) -----------------------------------------------------------

    def _reply(self, caller: Any, outcome: str, value: Any) -> None:
        self.out.append(Reply(caller, (outcome, value)))

    def _cast(self, pid: Any, *message: Any) -> None:
        self.out.append(Cast(pid, message))

    def _emit(self, kind: str, worker: Any, session: Any = None, detail: Any = None) -> None:
        self.out.append(Emit(kind, worker, session, detail))

    def _start(self, overflow: bool, fill: bool, waiter: Waiter | None = None) -> None:
        key = next(self.keys)
        self.starting = Starting(key, overflow, fill, waiter)
        self.out.append(Start(key, overflow))

    def _fill(self) -> None:
        """Start one of the regular workers owed (the next when it is up)."""
        if self.owed > 0 and self.starting is None:
            self._start(overflow=False, fill=True)

    def _fill_soon(self) -> None:
        """Start what is owed once the messages already queued are handled:
        a caller asking about a death (RAN, DEADLINE, BIND) gets its answer
        before a replacement's ``init`` runs."""
        if self.owed > 0 and not self.fill_armed:
            self.fill_armed = True
            self.out.append(Timer((FILL,), FILL_GRACE))

    def _retry_later(self) -> None:
        """Exponential backoff with "equal" jitter, which spreads pools apart."""
        if self.retry_armed:
            return
        first, cap = self.opts.restart_backoff
        delay = min(cap, first * 2 ** (self.start_failures - 1))
        delay = delay / 2 + self.rng.random() * delay / 2
        self.retry_armed = True
        self.out.append(Timer((RETRY_START,), delay))

    def _owe(self, w: WorkerRecord, now: bool = True) -> None:
        """A regular worker left service unplanned: a replacement is owed,
        started FILL_GRACE after its death (``now``: it is dead)."""
        if not w.overflow:
            self.owed += 1
            if now:
                self._fill_soon()

    def _growth(self) -> bool | None:
        """Whether a new worker may start under load, one at a time: a lazy
        pool's regular one up to size (those owed included), else an overflow
        one. The new worker's overflow flag, or None."""
        if self.starting is not None:
            return None
        if self.opts.lazy and self.regular_in_service() + self.owed < self.opts.size:
            return False
        if self.overflow_count() < self.opts.max_overflow:
            return True
        return None

    def _take_idle(self) -> WorkerRecord | None:
        """The next worker with a slot free, out of the free order (``_give``
        puts it back if it has another)."""
        if not self.idle:
            return None
        pid = self.idle.pop() if self.opts.strategy == "lifo" else self.idle.popleft()
        return self.workers[pid]

    def _make_idle(self, w: WorkerRecord) -> None:
        """``w`` has a slot free again: in the free order; IDLE (with an
        overflow worker's idle timer) once it has no holder."""
        if w.pid not in self.idle:
            self.idle.append(w.pid)
        if w.holders:
            return
        w.state = IDLE
        if w.overflow and self.opts.overflow_idle is not None:
            w.idle_stamp = next(self.stamps)
            self.out.append(Timer((OVERFLOW_IDLE, w.pid, w.idle_stamp), self.opts.overflow_idle))

    def _give(self, w: WorkerRecord, waiter: Waiter) -> None:
        """Check ``w`` out to ``waiter`` (``w`` is out of the free order: back
        in at the end the strategy takes from next, if a slot is still free)."""
        w.state = HELD
        w.holders.add(waiter.token)
        if len(w.holders) < self.slots:
            self.idle.append(w.pid)
        self.out.append(Watch(waiter.caller.pid))
        self.checkouts[waiter.token] = (w.pid, waiter.caller.pid)
        self._emit("checkout", w.pid)
        self._reply(waiter.caller, OK, w.pid)

    def _queue_or_refuse(self, waiter: Waiter) -> None:
        """No worker now: PoolUnavailable if none can come, PoolOverloaded
        past max_queue, else the caller waits (FIFO) up to its ``wait``."""
        error = self._unavailable()
        if error is not None:
            self._reply(waiter.caller, ERROR, error)
            return
        limit = self.opts.max_queue
        if limit is not None and len(self.queue) >= limit:
            self._emit("overloaded", None, detail=len(self.queue))
            self._reply(waiter.caller, ERROR, PoolOverloaded(
                f"pool {self.opts.name!r}: {len(self.queue)} callers already waiting "
                f"(max_queue={limit})"))
            return
        self.out.append(Watch(waiter.caller.pid))
        if waiter.wait is not None:
            self.out.append(Timer((EXPIRE, waiter.token), waiter.wait, key=waiter.token))
        self.queue.append(waiter)
        self._emit("queued", None, detail=len(self.queue))

    def _serve_queue(self) -> None:
        while self.queue:
            w = self._take_idle()
            if w is None:
                overflow = self._growth()
                if overflow is not None:
                    self._start(overflow, fill=False)  # the queue's head gets it when up
                return
            waiter = self.queue.popleft()
            self._cancel_timer(waiter)
            self._give(w, waiter)

    def _cancel_timer(self, waiter: Waiter) -> None:
        if waiter.wait is not None:
            self.out.append(CancelTimer(waiter.token))

    def _drop_waiter(self, token: Any) -> Waiter | None:
        """The caller waiting under ``token``, out of the queue (or of the start
        under way for it); None if it waits no more."""
        for waiter in self.queue:
            if waiter.token == token:
                self.queue.remove(waiter)
                self._cancel_timer(waiter)
                return waiter
        start = self.starting
        if start is not None and start.waiter is not None and start.waiter.token == token:
            self.starting = start._replace(waiter=None)
            return start.waiter
        return None

    def _unavailable(self) -> PoolUnavailable | None:
        """No worker alive and starting one fails: the error for a caller."""
        error = self.last_start_error
        if self.workers or self.start_failures == 0 or error is None:
            return None
        exc = PoolUnavailable(error, f"pool {self.opts.name!r} has no worker: starting one "
                                     f"failed ({type(error).__name__}: {error}); retrying")
        exc.__cause__ = error
        return exc

    def _refuse_waiters(self) -> None:
        """Nothing to wait for: every queued caller gets PoolUnavailable now."""
        error = self._unavailable()
        while error is not None and self.queue:
            waiter = self.queue.popleft()
            self._cancel_timer(waiter)
            self._reply(waiter.caller, ERROR, error)

    def _checkin(self, token: Any, how: str) -> None:
        """``how``: RETURN it, REPLACE it (its state is unknown), or it is
        DEAD (its holder saw it die: its Down is taken rather than reuse it)."""
        entry = self.checkouts.get(token)
        if entry is None:
            return  # its worker's Down came first, or the checkout was already returned
        w = self.workers[entry[0]]
        if how == DEAD:
            self.out.append(AwaitDown(w.pid))
            return
        del self.checkouts[token]
        w.holders.discard(token)
        if token != claim_token(w.pid):  # a claim ending is no checkin
            self._emit("checkin", w.pid, detail=None if how == RETURN else how)
        if how == REPLACE and w.holders:  # others still use it: killed once they are done
            self._retire(w)
            w.kill_when_free = "checkout_replaced"
        elif how == REPLACE:  # a planned replacement, not counted as a restart
            if w.state == RETIRING_HELD:
                w.state = RETIRING
                self.out.append(Kill(w.pid, "checkout_replaced"))
            else:
                self._retire(w, kill="checkout_replaced")
        elif w.state == RETIRING_HELD:
            self._leave_when_free(w)
        else:
            self._make_idle(w)
            self._serve_queue()

    def _leave_when_free(self, w: WorkerRecord) -> None:
        """A retiring worker's checkin: at its last, it leaves (or is killed,
        if a holder's state was unknown)."""
        if w.holders:
            return
        w.state = RETIRING
        if w.kill_when_free is not None:
            self.out.append(Kill(w.pid, w.kill_when_free))
        else:
            self._cast(w.pid, LEAVE)

    def _take_out_of_service(self, w: WorkerRecord) -> None:
        """Out of the idle order, its checkout (if any) ended, its sessions
        released."""
        if w.pid in self.idle:
            self.idle.remove(w.pid)
        for token in w.holders:
            del self.checkouts[token]
        w.holders.clear()
        self._release_sessions(w)

    def _release_sessions(self, w: WorkerRecord) -> None:
        """Its sessions are re-bound (and replayed) at their next command."""
        for sid in w.sessions:
            if self.sessions.get(sid) == w.pid:
                self.sessions[sid] = None
        w.sessions.clear()

    def _retire(self, w: WorkerRecord, kill: str | None = None,
                event: str | None = "recycled") -> None:
        """Replace a worker on purpose: its sessions move (by replay) at their
        next command, a replacement is owed (an eager pool's regular worker),
        and it leaves once idle: at once if idle, at its checkin if held, or
        killed at once if ``kill`` says why (it cannot be asked)."""
        if w.state not in IN_SERVICE:
            return
        held = w.state == HELD and kill is None
        if held:  # it stays checked out until its last checkin
            self._release_sessions(w)
            if w.pid in self.idle:  # no new checkout: a slot was free
                self.idle.remove(w.pid)
        else:
            self._take_out_of_service(w)
        self._cast(w.pid, RELEASE)  # from now on it answers UNBOUND for them
        if event is not None:
            self._emit(event, w.pid)
        if not w.overflow and not self.opts.lazy:
            self.owed += 1
            self._fill_soon()
        if kill is not None:
            w.state = RETIRING
            self.out.append(Kill(w.pid, kill))
        elif held:
            w.state = RETIRING_HELD
        else:
            w.state = RETIRING
            self._cast(w.pid, LEAVE)
        self._serve_queue()

    def _bind(self, caller: Any, sid: Any, stale: Any, may_start: bool) -> None:
        current = self.sessions.get(sid)
        if current is not None and current in self.workers and current != stale:
            self._reply(caller, OK, current)
            return
        w = self._bind_target(may_start)
        if w is None and self.starting is not None and may_start:
            self.binds_waiting.append((caller, sid, stale))  # for the start under way
            return
        if w is None:
            self._reply(caller, ERROR, self._unavailable() or PoolError(
                f"pool {self.opts.name!r} has no worker to bind session {sid!r} to"))
            return
        if current is not None and current in self.workers:
            self.workers[current].sessions.discard(sid)
        log = self.replay_logs.get(sid)
        self._cast(w.pid, BIND_SESSION, sid, log)  # reaches it before the caller's command
        self.sessions[sid] = w.pid
        w.sessions.add(sid)
        self._emit("session_bound", w.pid, sid, detail="replay" if log else None)
        self._reply(caller, OK, w.pid)

    def _bind_target(self, may_start: bool) -> WorkerRecord | None:
        """The least loaded worker in service: fewest sessions, then fewest
        commands running (at the last bind), then fewest checkouts; regular
        ones first. A lazy pool whose regular workers
        all hold sessions starts one more (up to size); a pool with none
        alive starts what it owes now. None: none (a start may be under way)."""
        candidates = [w for w in self.workers.values() if w.state in IN_SERVICE]
        regular = [w for w in candidates if not w.overflow]
        if may_start and self.opts.lazy and all(w.sessions for w in regular) and \
                self.regular_in_service() + self.owed < self.opts.size:
            if self.starting is None:
                self._start(overflow=False, fill=False)
            return None
        pool = regular or candidates
        if pool:
            loads = self.in_flight
            return min(pool, key=lambda w: (len(w.sessions), loads.get(w.pid, 0), len(w.holders)))
        if may_start and self.owed > 0:  # none alive: its replacement starts now
            self._fill()
        return None

    def _rerun_binds(self, may_start: bool) -> None:
        binds, self.binds_waiting = self.binds_waiting, []
        for caller, sid, stale in binds:
            self._bind(caller, sid, stale, may_start)

    def _after_down(self, pid: Any, action: tuple) -> None:
        """Do ``action`` at the worker's Down, which the server takes now."""
        self.at_down.setdefault(pid, []).append(action)
        self.out.append(AwaitDown(pid))

    def _at_down(self, pid: Any, action: tuple) -> None:
        if action[0] == "ran":
            self._reply(action[1], OK, self.died_running.get(pid, UNKNOWN))
        elif action[0] == "deadline":
            self._reply(action[1], OK, None)
        else:  # a bind that named this worker stale
            _, caller, sid, stale = action
            self._bind(caller, sid, stale, may_start=True)

    def _fold(self, pid: Any, final: Reading | None) -> None:
        """A worker is gone: its final counts join the pool's own, and the
        command it was running (if any) is remembered for its callers and
        counted, as a command that ended in an error."""
        running: Any = UNKNOWN
        if final is not None:
            running = tuple(final.running)
            self.counts["total_commands"] += final.ran + final.uncounted
            self.counts["errors"] += final.failed + final.uncounted
        self.died_running[pid] = running
        if len(self.died_running) > DEATHS_KEPT:
            del self.died_running[next(iter(self.died_running))]

    def _health_timer(self, w: WorkerRecord) -> None:
        if self.opts.health_timeout is not None:
            self.out.append(Timer((HEALTH_LATE, w.pid, w.health_token),
                                  self.opts.health_timeout))

    # ---- the invariants ---------------------------------------------------------------------

    def invariants(self) -> None:
        """AssertionError naming the first invariant broken (see the module's docstring)."""
        assert self.out is None, "an event is under way"
        for check in (_check_states, _check_sessions, _check_waiters, _check_counts):
            check(self)


def _check_states(book: PoolBook) -> None:
    free = {pid for pid, w in book.workers.items()
            if w.state in IN_SERVICE and len(w.holders) < book.slots}
    assert len(book.idle) == len(set(book.idle)) and set(book.idle) == free, \
        f"free order {list(book.idle)} is not the workers with a slot free {free}"
    held = {}
    for pid, w in book.workers.items():
        assert w.state in STATES, f"{w}: unknown state"
        assert bool(w.holders) == (w.state in (HELD, RETIRING_HELD)), \
            f"{w}: holders {w.holders!r} do not match its state"
        assert len(w.holders) <= book.slots, f"{w}: {len(w.holders)} holders, {book.slots} slots"
        assert w.kill_when_free is None or w.state in (RETIRING_HELD, RETIRING, KILLED), \
            f"{w}: to be killed when free, yet in service"
        held.update(dict.fromkeys(w.holders, pid))
    assert {t: e[0] for t, e in book.checkouts.items()} == held, \
        f"checkouts {book.checkouts} are not the held workers' {held}"


def _check_sessions(book: PoolBook) -> None:
    for sid, pid in book.sessions.items():
        if pid is not None:
            w = book.workers.get(pid)
            assert w is not None and w.state in IN_SERVICE and sid in w.sessions, \
                f"session {sid!r} bound to {w or pid!r}, which does not hold it"
    for pid, w in book.workers.items():
        for sid in w.sessions:
            assert book.sessions.get(sid) == pid, f"{w} lists {sid!r}, bound elsewhere"


def _check_waiters(book: PoolBook) -> None:
    assert not (book.queue and book.idle), \
        f"callers wait ({len(book.queue)}) while workers are idle ({list(book.idle)})"
    tokens = [w.token for w in book.queue]
    if book.starting is not None and book.starting.waiter is not None:
        tokens.append(book.starting.waiter.token)
    assert len(tokens) == len(set(tokens)), f"a caller waits twice: {tokens}"
    assert not set(tokens) & set(book.checkouts), "a caller waits for what it holds"
    assert not book.binds_waiting or book.starting is not None, \
        f"binds wait for no start: {book.binds_waiting}"
    assert set(book.at_down) <= set(book.workers), \
        f"answers wait for the Down of workers already gone: {set(book.at_down)}"


def _check_counts(book: PoolBook) -> None:
    assert book.owed >= 0, f"owed {book.owed}"
    assert book.starting is None or not book.starting.fill or book.owed > 0, \
        "a start fills what is not owed"
    assert book.overflow_count() <= book.opts.max_overflow, \
        f"{book.overflow_count()} overflow workers, max_overflow {book.opts.max_overflow}"
    regular = book.regular_in_service() + book.owed
    if book.starting is not None and not book.starting.overflow and not book.starting.fill:
        regular += 1
    target = max(book.opts.size, book.adopted)
    assert regular <= target, f"{regular} regular workers in service or owed, size {target}"
    assert book.opts.lazy or regular == target, \
        f"an eager pool with {regular} regular workers in service or owed, size {target}"


def _busy(reading: Reading | None) -> bool:
    """Whether the worker is running a command now (from its counts page)."""
    return reading is not None and bool(reading.running)


def _in_flight(reading: Reading | None) -> int:
    """How many commands the worker is running now (from its counts page)."""
    return 0 if reading is None else len(reading.running)


def _ran(reading: Reading | None) -> int:
    return reading.ran if reading is not None else 0
