"""The pool's server: a GenServer that owns the pool's bookkeeping.

It monitors the workers and the callers holding or waiting for one, and
holds the idle list, the FIFO wait queue, the session bindings, each
session's replay log, the counters and the subscribers. It is *not* on the
path of a bound session's commands: callers call their worker directly. The
workers count their commands in shared memory this server reads (see
_counters); a worker casts to it only what changes its bookkeeping: a replay
log entry, being worn out, a replay's outcome, a health answer. See
docs/pool.md.
"""

from __future__ import annotations

import collections
import itertools
import random
import time
from typing import Any

import otpy
from otpy import lowlevel

from ._counters import CountsReader
from ._errors import (PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable, SessionNotFound,
                      start_error)
from ._pool_options import PoolEvent, PoolStatus, Settings
from ._worker import HEALTH, LOGGED, REPLAYED, RETIRED, WORN, worker_spec

DOWN_WAIT = 5.0  # how long a bind waits for the Down of a worker a caller saw die
DEATHS_KEPT = 256  # dead workers whose running command callers may still ask about
UNKNOWN = "unknown"  # a dead worker's running command, when the server cannot tell
# A replacement's start (its init: milliseconds) waits this long after a death,
# so that the dead worker's callers, whose questions ("was mine running?")
# reach this server a fraction of a millisecond after its Down, are answered
# first: their WorkerCrashed or retry must not wait for an init.
FILL_GRACE = 0.002


class _W:
    """The server's record of one worker."""

    __slots__ = ("pid", "mref", "sessions", "holder", "overflow", "retiring", "deadline_killed",
                 "idle_stamp", "health_token", "health_mark", "counts")

    def __init__(self, pid: otpy.Pid, mref: otpy.Ref, overflow: bool) -> None:
        self.pid = pid
        self.mref = mref
        self.sessions: set = set()
        self.holder: Any = None  # the checkout token while checked out
        self.overflow = overflow
        self.retiring: str | None = None  # why it is being replaced on purpose
        self.deadline_killed = False
        self.idle_stamp = 0
        self.health_token: Any = None
        self.health_mark = 0  # its command count when the health check was sent
        self.counts: CountsReader | None = None  # its command counts (shared memory)


class _Waiter:
    __slots__ = ("caller", "token", "timer")

    def __init__(self, caller: otpy.From, token: Any, timer: otpy.Ref | None) -> None:
        self.caller, self.token, self.timer = caller, token, timer


class PoolServer(otpy.GenServer):

    def init(self, opts: Any, workers_sup: str) -> None:
        self.opts = opts
        self.workers_sup = workers_sup
        self.me = otpy.self()
        info = otpy.process_info(self.me)
        self.supervisor = info["parent"] if info else None
        self.log = lowlevel.logger(pool=opts.name)
        self.keys = itertools.count(1)
        self.stamps = itertools.count(1)
        self.workers: dict[otpy.Pid, _W] = {}  # in start order
        self.by_mref: dict[otpy.Ref, tuple[str, Any]] = {}  # monitor -> (kind, key)
        self.idle: collections.deque[otpy.Pid] = collections.deque()
        self.queue: collections.deque[_Waiter] = collections.deque()
        self.checkouts: dict[Any, tuple[otpy.Pid, otpy.Pid]] = {}  # token -> worker, caller
        # One monitor per caller that ever checked out or queued, kept until it
        # dies: a checkout then costs no monitor/demonitor round trip each time.
        self.callers: dict[otpy.Pid, otpy.Ref] = {}
        self.sessions: dict[Any, otpy.Pid | None] = {}  # session -> its worker (None: re-bind)
        self.logs: dict[Any, list] = {}
        self.subscribers: dict[otpy.Pid, otpy.Ref] = {}
        # dead worker -> the ref (origin serial, number) of the command it was
        # running, or None: the callers of its other commands retry them
        self.died_running: dict[otpy.Pid, tuple[int, int] | None] = {}
        # Degraded, never dead: regular workers owed (a death, a retirement, a
        # start that failed) are started again and again, with backoff.
        self.owed = 0
        self.start_failures = 0  # in a row
        self.last_start_error: BaseException | None = None
        self.retry_timer: otpy.Ref | None = None
        self.fill_pending = False  # a "$fill" is on its way to this server
        self.rng = random.Random()
        self.label = ""
        self.counts = dict(total_commands=0, errors=0, timeouts=0, worker_restarts=0,
                           sessions_recovered=0, sessions_lost=0)
        self._adopt()
        if not opts.lazy:
            self.owed = max(0, opts.size - self._regular_count())
            self._fill()
        # what start_link reports: the first workers of a new pool must start
        self.first_failure = self.last_start_error
        if opts.health_interval is not None:
            otpy.send_after(self.me, ("$health_tick",), opts.health_interval)
        self._annotate()

    def _adopt(self) -> None:
        """A replaced server takes over the workers (and their sessions) alive.
        One that does not answer within DOWN_WAIT (stuck in a command) is
        killed: nobody could reach it any more."""
        children = otpy.DynamicSupervisor.which_children(self.workers_sup)
        numbers = [c.id[1] for c in children if type(c.id) is tuple and len(c.id) == 2
                   and isinstance(c.id[1], int)]
        self.keys = itertools.count(max(numbers, default=0) + 1)
        for child in children:
            if child.pid is None:
                continue
            try:
                sessions = otpy.call(child.pid, ("adopt", self.me), timeout=DOWN_WAIT)
            except otpy.Exited:
                continue
            except otpy.Timeout:
                self._kill(child.pid, "adoption_timeout")
                continue
            w = self._track(child.pid, overflow=False)
            if w.counts is not None:  # this server counts from its own start, as before
                ran, failed = w.counts.read()
                self.counts["total_commands"] -= ran
                self.counts["errors"] -= failed
            for sid, log in sessions.items():
                self.sessions[sid] = child.pid
                w.sessions.add(sid)
                if log:
                    self.logs[sid] = log
            self.idle.append(child.pid)

    # ---- workers --------------------------------------------------------------

    def _regular_count(self) -> int:
        return sum(1 for w in self.workers.values() if not w.overflow and not w.retiring)

    def _overflow_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.overflow)

    def _track(self, pid: otpy.Pid, overflow: bool) -> _W:
        mref = otpy.monitor(pid)
        w = self.workers[pid] = _W(pid, mref, overflow)
        self.by_mref[mref] = ("worker", pid)
        try:
            w.counts = CountsReader(pid.os_pid, otpy.call(pid, ("counts_fd",), timeout=DOWN_WAIT))
        except (otpy.Exited, otpy.Timeout, OSError):
            # dead (its Down follows; OSError: it died between answering and
            # our opening its fd) or stuck: it has run nothing we could count
            pass
        return w

    def _fold_counts(self, w: _W) -> None:
        """A worker is gone: its final counts join the pool's own, and the
        command it was running (if any) is remembered for its callers and
        counted, as a command that ended in an error."""
        running: Any = UNKNOWN
        if w.counts is not None:
            ran, failed = w.counts.read()
            running = w.counts.running()
            died_with_it = w.counts.uncounted()
            self.counts["total_commands"] += ran + died_with_it
            self.counts["errors"] += failed + died_with_it
            w.counts.close()
            w.counts = None
        self.died_running[w.pid] = running
        if len(self.died_running) > DEATHS_KEPT:
            del self.died_running[next(iter(self.died_running))]

    def _start_worker(self, overflow: bool) -> _W | None:
        """Start one worker (idle); None if its init failed (recorded)."""
        spec = worker_spec(("worker", next(self.keys)), self.opts, self.me)
        try:
            pid = otpy.DynamicSupervisor.start_child(self.workers_sup, spec)
        except Exception as exc:
            self._start_failed(start_error(exc))
            return None
        self.start_failures = 0
        assert pid is not None  # a WorkerProcess's init never returns IGNORE
        w = self._track(pid, overflow)
        self.idle.append(pid)
        self._event("worker_started", pid, detail="overflow" if overflow else None)
        return w

    def _start_failed(self, error: BaseException) -> None:
        lowlevel.keep_traceback(error)  # it travels to callers and subscribers
        self.start_failures += 1
        self.last_start_error = error
        self.log.warning("pool worker start failed", error=f"{type(error).__name__}: {error}",
                         exception=lowlevel.traceback_text(error), in_a_row=self.start_failures,
                         workers=len(self.workers), size=self.opts.size)
        self._event("worker_start_failed", None, detail=error)

    def _fill(self) -> None:
        """Start the regular workers owed, one after the other. On a failure,
        retry later (exponential backoff with jitter, ``restart_backoff``)
        while the live workers serve; callers with no worker to wait for are
        told at once (PoolUnavailable)."""
        while self.owed > 0:
            if self._start_worker(overflow=False) is None:
                self._retry_fill_later()
                self._refuse_waiters()
                break
            self.owed -= 1
        self._serve_queue()

    def _fill_soon(self) -> None:
        """Start what is owed once the messages already queued are handled:
        a caller asking about a death (``ran``, a command deadline, a bind)
        gets its answer before a replacement's ``init`` runs, so its error
        (WorkerCrashed, CommandTimeout) comes within milliseconds."""
        if self.owed > 0 and not self.fill_pending:
            self.fill_pending = True
            otpy.send_after(self.me, ("$fill",), FILL_GRACE)

    def _retry_fill_later(self) -> None:
        if self.retry_timer is not None:
            return
        first, cap = self.opts.restart_backoff
        delay = min(cap, first * 2 ** (self.start_failures - 1))
        delay = delay / 2 + self.rng.random() * delay / 2  # "equal" jitter: spreads pools apart
        self.retry_timer = otpy.send_after(self.me, ("$start",), delay)

    def _unavailable(self) -> PoolUnavailable | None:
        """No worker alive and starting one fails: the error for a caller."""
        if self.workers or self.start_failures == 0 or self.last_start_error is None:
            return None
        error = self.last_start_error
        exc = PoolUnavailable(error, f"pool {self.opts.name!r} has no worker: starting one "
                                     f"failed ({type(error).__name__}: {error}); retrying")
        exc.__cause__ = error
        return exc

    def _refuse_waiters(self) -> None:
        """Nothing to wait for: every queued caller gets PoolUnavailable now."""
        error = self._unavailable()
        if error is None:
            return
        while self.queue:
            waiter = self.queue.popleft()
            _cancel(waiter.timer)
            otpy.reply(waiter.caller, ("error", error))

    def _worker_down(self, pid: otpy.Pid, reason: Any) -> None:
        w = self.workers.pop(pid)
        self.by_mref.pop(w.mref, None)
        self._fold_counts(w)
        if pid in self.idle:
            self.idle.remove(pid)
        if w.holder is not None:
            del self.checkouts[w.holder]
        for sid in w.sessions:
            if self.sessions.get(sid) == pid:
                self.sessions[sid] = None  # re-bound (and replayed) at its next command
        planned = w.retiring is not None or reason == RETIRED
        self._event("worker_exited", pid, detail=lowlevel.describe_reason(reason))
        if not planned or w.deadline_killed:
            self.counts["worker_restarts"] += 1
        if not planned and not w.overflow:
            self.owed += 1
            self._fill_soon()
        self._serve_queue()

    def _take_down(self, pid: otpy.Pid) -> None:
        """A caller saw the worker die before this server did: take its Down now."""
        w = self.workers[pid]
        try:
            reason = lowlevel.await_down(w.mref, DOWN_WAIT)
        except otpy.Timeout:  # alive after all (a caller's mistake): leave it be
            return
        self.by_mref.pop(w.mref, None)
        self._worker_down(pid, reason)

    def _kill(self, pid: otpy.Pid, why: str) -> None:
        """Kill a worker on purpose (it cannot be asked: it is stuck, or its
        state is unknown). A planned exit, ``("shutdown", why)``: no crash
        report, a warning here; the caller's error says the rest."""
        self.log.warning("pool worker killed", worker=repr(pid), why=why)
        lowlevel.kill(pid, ("shutdown", why))

    def _retire(self, w: _W, why: str, kill: str | None = None) -> None:
        """Replace a worker on purpose: its sessions move (by replay) at their
        next command, a replacement starts, and it stops once idle (or at
        once, killed, if ``kill`` says why)."""
        if w.retiring is not None:
            return
        w.retiring = why
        for sid in w.sessions:
            if self.sessions.get(sid) == w.pid:
                self.sessions[sid] = None
        w.sessions.clear()
        otpy.cast(w.pid, ("release",))  # from now on it answers "unbound" for them
        if w.pid in self.idle:
            self.idle.remove(w.pid)
        self._event(why, w.pid)
        if not w.overflow and not self.opts.lazy:
            self.owed += 1
            self._fill_soon()
        if kill is not None:
            self._kill(w.pid, kill)
        elif w.holder is None:
            otpy.cast(w.pid, ("retire",))
        # else: retired at its checkin
        self._serve_queue()

    # ---- checkouts ------------------------------------------------------------

    def _take_idle(self) -> _W | None:
        if not self.idle:
            return None
        pid = self.idle.pop() if self.opts.strategy == "lifo" else self.idle.popleft()
        return self.workers[pid]

    def _grow(self) -> _W | None:
        """A new worker under load: lazy up to size, then overflow."""
        if self.opts.lazy and self._regular_count() < self.opts.size:
            w = self._start_worker(overflow=False)
        elif self._overflow_count() < self.opts.max_overflow:
            w = self._start_worker(overflow=True)
        else:
            return None
        if w is not None:
            self.idle.remove(w.pid)
        return w

    def _watch_caller(self, pid: otpy.Pid) -> None:
        if pid not in self.callers:
            mref = self.callers[pid] = otpy.monitor(pid)
            self.by_mref[mref] = ("caller", pid)

    def _caller_down(self, pid: otpy.Pid) -> None:
        """A caller died: what it held is replaced (its state is unknown),
        its place in the queue dropped."""
        self.callers.pop(pid, None)
        for token in [t for t, (_, holder) in self.checkouts.items() if holder == pid]:
            self._checkin(token, "replace")
        for waiter in [w for w in self.queue if w.caller.pid == pid]:
            self._drop_waiter(waiter.token)

    def _give(self, w: _W, token: Any, caller_pid: otpy.Pid) -> otpy.Pid:
        w.holder = token
        self._watch_caller(caller_pid)
        self.checkouts[token] = (w.pid, caller_pid)
        self._event("checkout", w.pid)
        return w.pid

    def _checkout(self, caller: otpy.From, token: Any, timeout: float | None) -> Any:
        w = self._take_idle() or self._grow()
        if w is not None:
            return ("ok", self._give(w, token, caller.pid))
        unavailable = self._unavailable()
        if unavailable is not None:
            return ("error", unavailable)
        if self.opts.max_queue is not None and len(self.queue) >= self.opts.max_queue:
            self._event("overloaded", None, detail=len(self.queue))
            return ("error", PoolOverloaded(
                f"pool {self.opts.name!r}: {len(self.queue)} callers already waiting "
                f"(max_queue={self.opts.max_queue})"))
        self._watch_caller(caller.pid)
        # ``timeout``: the caller's wait, resolved by its handle (None: no limit)
        timer = None if timeout is None else otpy.send_after(self.me, ("$expire", token), timeout)
        self.queue.append(_Waiter(caller, token, timer))
        self._event("queued", None, detail=len(self.queue))
        return otpy.NOREPLY

    def _serve_queue(self) -> None:
        while self.queue:
            w = self._take_idle() or self._grow()
            if w is None:
                return
            waiter = self.queue.popleft()
            _cancel(waiter.timer)
            otpy.reply(waiter.caller, ("ok", self._give(w, waiter.token, waiter.caller.pid)))

    def _checkin(self, token: Any, how: str) -> None:
        """``how``: "return" it, "replace" it (its state is unknown), or it is
        "dead" (its holder saw it die: take its Down rather than reuse it)."""
        entry = self.checkouts.get(token)
        if entry is None:
            return  # its worker's Down came first, or the checkout was already returned
        pid = entry[0]
        if how == "dead" and otpy.is_alive(pid):
            how = "replace"  # the holder's error came from elsewhere: its state is unknown
        if how == "dead":
            self._take_down(pid)
            return
        del self.checkouts[token]
        w = self.workers[pid]
        w.holder = None
        self._event("checkin", pid, detail=None if how == "return" else how)
        if how == "replace":  # its state is unknown: replaced (a planned replacement, not counted)
            self._retire(w, "recycled", kill="checkout_replaced")
            return
        if w.retiring is not None:
            otpy.cast(pid, ("retire",))
            return
        self.idle.append(pid)
        if w.overflow and self.opts.overflow_idle is not None:
            w.idle_stamp = next(self.stamps)
            otpy.send_after(self.me, ("$overflow_idle", pid, w.idle_stamp), self.opts.overflow_idle)
        self._serve_queue()

    def _drop_waiter(self, token: Any) -> _Waiter | None:
        for waiter in self.queue:
            if waiter.token == token:
                self.queue.remove(waiter)
                _cancel(waiter.timer)
                return waiter
        return None

    # ---- sessions ---------------------------------------------------------------

    def _bind(self, sid: Any, stale: otpy.Pid | None) -> otpy.Pid:
        if stale is not None and stale in self.workers and not otpy.is_alive(stale):
            self._take_down(stale)
        current = self.sessions.get(sid)
        if current is not None and current in self.workers and current != stale:
            return current
        w = self._least_loaded()
        if w is None and self.owed > 0:  # none alive: its replacement starts now
            self._fill()
            w = self._least_loaded()
        if w is None:
            raise self._unavailable() or PoolError(
                f"pool {self.opts.name!r} has no worker to bind session {sid!r} to")
        if current is not None and current in self.workers:
            self.workers[current].sessions.discard(sid)
        log = self.logs.get(sid)
        otpy.cast(w.pid, ("bind", sid, log))  # reaches the worker before the caller's command
        self.sessions[sid] = w.pid
        w.sessions.add(sid)
        self._event("session_bound", w.pid, sid, detail="replay" if log else None)
        return w.pid

    def _least_loaded(self) -> _W | None:
        candidates = [w for w in self.workers.values() if w.retiring is None]
        regular = [w for w in candidates if not w.overflow]
        if self.opts.lazy and self._regular_count() < self.opts.size and \
                all(w.sessions for w in regular):
            started = self._start_worker(overflow=False)
            if started is not None:
                return started
        pool = regular or candidates
        if not pool:
            return None
        return min(pool, key=lambda w: (len(w.sessions), w.holder is not None))

    # ---- the callbacks ------------------------------------------------------------

    def handle_call(self, request: tuple, caller: otpy.From) -> Any:
        op = request[0]
        try:
            if op == "checkout":
                return self._checkout(caller, request[1], request[2])
            return ("ok", getattr(self, "_op_" + op)(*request[1:]))
        except otpy.ProcessExit:
            raise
        except Exception as exc:
            return ("error", exc)
        finally:
            self._annotate()

    def _op_bind(self, sid: Any, stale: otpy.Pid | None) -> otpy.Pid:
        return self._bind(sid, stale)

    def _op_ran(self, pid: otpy.Pid) -> tuple[int, int] | None | str:
        """A caller's command met its worker's death: which command that
        worker was running (its caller's ref), None, or UNKNOWN. Its Down is
        taken first."""
        if pid in self.workers:
            self._take_down(pid)
        return self.died_running.get(pid, UNKNOWN)

    def _op_deadline(self, pid: otpy.Pid, token: Any) -> None:
        """A caller's command ran past its timeout: kill the worker, count it
        (as a timeout here; as a command in error when its Down is taken)."""
        self.counts["timeouts"] += 1
        self._event("timeout", pid, detail="command")
        w = self.workers.get(pid)
        if w is None:
            return
        w.deadline_killed = True
        self._kill(pid, "command_timeout")
        reason = lowlevel.await_down(w.mref, DOWN_WAIT)  # a millisecond or so
        self._worker_down(pid, reason)  # its replacement starts after this answer
        self._annotate()

    def _op_end_session(self, sid: Any) -> None:
        if sid not in self.sessions:
            raise SessionNotFound(f"pool {self.opts.name!r} has no session {sid!r}")
        pid = self.sessions.pop(sid)
        self.logs.pop(sid, None)
        if pid is not None and pid in self.workers:
            self.workers[pid].sessions.discard(sid)
            otpy.cast(pid, ("end", sid))

    def _op_status(self) -> PoolStatus:
        held = len(self.checkouts)
        counts = dict(self.counts)
        for w in self.workers.values():  # live workers' counts, read now
            if w.counts is not None:
                ran, failed = w.counts.read()
                counts["total_commands"] += ran
                counts["errors"] += failed
        return PoolStatus(size=self.opts.size, overflow=self._overflow_count(),
                          idle=len(self.idle), busy=held, queued=len(self.queue),
                          sessions=len(self.sessions), workers=len(self.workers),
                          starting=self.owed, degraded=self.owed > 0 and self.start_failures > 0,
                          **counts)

    def _op_first_start(self) -> BaseException | None:
        """Why the first workers of this server could not start (None: they did)."""
        return self.first_failure

    def _op_workers(self) -> list[otpy.Pid]:
        return list(self.workers)

    def _op_worker_of(self, sid: Any) -> otpy.Pid | None:
        return self.sessions.get(sid)

    def _op_subscribe(self, pid: otpy.Pid) -> None:
        if pid not in self.subscribers:
            mref = otpy.monitor(pid)
            self.subscribers[pid] = mref
            self.by_mref[mref] = ("subscriber", pid)

    def _op_unsubscribe(self, pid: otpy.Pid) -> None:
        mref = self.subscribers.pop(pid, None)
        if mref is not None:
            self.by_mref.pop(mref, None)
            otpy.demonitor(mref, flush=True)

    def _op_settings(self) -> Settings:
        return Settings(self.opts.command_timeout, self.opts.checkout_timeout, self.supervisor,
                        self.opts.size + self.opts.max_overflow)

    def handle_cast(self, request: tuple) -> Any:
        op = request[0]
        if op == LOGGED:  # a replay command ran: the session's log grows
            _, pid, sid, entry = request
            if self.sessions.get(sid, False) in (pid, None):
                self.logs.setdefault(sid, []).append(entry)
        elif op == WORN:  # past max_commands or max_memory: replaced when idle
            w = self.workers.get(request[1])
            if w is not None:
                self._retire(w, "recycled")
        elif op == REPLAYED:
            _, pid, sid, cause = request
            if cause is None:
                self.counts["sessions_recovered"] += 1
                self._event("session_recovered", pid, sid)
            else:
                self.counts["sessions_lost"] += 1
                self.logs.pop(sid, None)
                self._event("session_lost", pid, sid, detail=cause)
        elif op == HEALTH:
            _, pid, token, healthy, detail = request
            w = self.workers.get(pid)
            if w is not None and w.health_token == token:
                w.health_token = None
                if not healthy:
                    self._event("health_failed", pid, detail=detail)
                    self._retire(w, "recycled")
        elif op == "checkin":
            self._checkin(request[1], request[2])
        elif op == "cancel":  # a caller gave up waiting
            if self._drop_waiter(request[1]) is None:
                self._checkin(request[1], "return")
        self._annotate()
        return None

    def handle_info(self, message: Any) -> Any:
        if type(message) is otpy.Down:
            kind, key = self.by_mref.pop(message.ref, ("", None))
            if kind == "worker":
                self._worker_down(key, message.reason)
            elif kind == "caller":
                self._caller_down(key)
            elif kind == "subscriber":
                self.subscribers.pop(key, None)
        elif type(message) is tuple and message:
            tag = message[0]
            if tag == "$expire":
                waiter = self._drop_waiter(message[1])
                if waiter is not None:
                    self.counts["timeouts"] += 1
                    self._event("timeout", None, detail="checkout")
                    otpy.reply(waiter.caller, ("error", PoolTimeout(
                        f"no worker of pool {self.opts.name!r} became free in time")))
            elif tag == "$start":  # a retry after a failed start
                self.retry_timer = None
                self._fill()
            elif tag == "$fill":  # see _fill_soon
                self.fill_pending = False
                self._fill()
            elif tag == "$overflow_idle":
                w = self.workers.get(message[1])
                if w is not None and w.holder is None and w.idle_stamp == message[2] \
                        and not w.sessions:
                    w.retiring = "overflow_idle"
                    self.idle.remove(w.pid)
                    otpy.cast(w.pid, ("retire",))
            elif tag == "$health_tick":
                self._health_tick()
            elif tag == "$health_late":
                w = self.workers.get(message[1])
                if w is not None and w.health_token == message[2]:
                    self._health_late(w)
        self._annotate()
        return None

    def _health_tick(self) -> None:
        """Check the idle workers: those not running a command (its counts page
        says; a checked-out worker between commands is idle too). A busy
        worker is never checked: a command that hangs is command_timeout's
        business, not the health check's."""
        for w in list(self.workers.values()):
            if w.retiring is None and w.health_token is None and not self._busy(w):
                w.health_token = next(self.stamps)
                w.health_mark = self._commands_run(w)
                otpy.cast(w.pid, ("health", w.health_token))
                self._arm_health_late(w)
        assert self.opts.health_interval is not None  # ticks only run with it set
        otpy.send_after(self.me, ("$health_tick",), self.opts.health_interval)

    def _arm_health_late(self, w: _W) -> None:
        if self.opts.health_timeout is not None:
            otpy.send_after(self.me, ("$health_late", w.pid, w.health_token),
                            self.opts.health_timeout)

    def _health_late(self, w: _W) -> None:
        """No answer within health_timeout. A command that came after the
        check was sent (a bound session's, which bypasses this server) runs
        before it: if the worker is running one, or ran some since, the check
        is still queued behind them, and gets another health_timeout. Else
        the check itself hangs: the worker is replaced."""
        mark = self._commands_run(w)
        if self._busy(w) or mark != w.health_mark:
            w.health_mark = mark
            self._arm_health_late(w)
            return
        self._event("health_failed", w.pid, detail="no answer")
        self._retire(w, "recycled", kill="health_check_timeout")

    @staticmethod
    def _busy(w: _W) -> bool:
        """Whether the worker is running a command now (from its counts page)."""
        return w.counts is not None and w.counts.running() is not None

    @staticmethod
    def _commands_run(w: _W) -> int:
        return w.counts.read()[0] if w.counts is not None else 0

    # ---- observing ------------------------------------------------------------------

    def _event(self, kind: str, worker: Any, session: Any = None, detail: Any = None) -> None:
        event = PoolEvent(kind, worker, session, detail, time.time())
        self.log.debug("pool." + kind, worker=repr(worker), session=repr(session),
                       detail=None if detail is None else repr(detail))
        for pid in list(self.subscribers):
            otpy.send(pid, event)

    def _annotate(self) -> None:
        label = f"otpy_pool.Pool in use {len(self.checkouts)}/{len(self.workers)}"
        if self.queue:
            label += f" queued {len(self.queue)}"
        if label != self.label:
            self.label = label
            lowlevel.annotate(self.me, behaviour=label)


def _cancel(timer: otpy.Ref | None) -> None:
    if timer is not None:
        otpy.cancel_timer(timer)
