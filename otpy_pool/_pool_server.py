"""The pool's server: the shell around its bookkeeping (``PoolBook``).

It turns messages into the book's events and the book's effects into
messages, and does what the book cannot: processes (starting workers
through the workers' DynamicSupervisor, monitors, kills, taking a Down),
timers, shared memory (each worker's counts page, read for status(), a
health tick and a death), logs, subscribers and the observer's label, and
the claims page (see _claims). It is *not* on the path of a bound
session's commands, nor of a session-less one that claims a free worker:
callers call the worker directly. The workers count their commands in shared memory this
server reads (see _counters); a worker casts to it only what changes its
bookkeeping: a replay log entry, being worn out, a replay's outcome, a
health answer. Every message is in _protocol's table. See docs/pool.md.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

import otpy
from otpy import lowlevel

from ._claims import ClaimsAddress, ClaimsPage
from ._counters import CountsReader
from ._errors import CommandTimeout, WorkerCrashed, duration, start_error
from ._pool_book import (IN_SERVICE, AwaitDown, CancelTimer, Cast, Emit, Kill, PoolBook, Reading,
                         Reply, Start, Timer, Watch, claim_token)
from ._pool_meter import PoolMeter, command_names
from ._pool_options import PoolEvent, PoolStatus, Settings
from ._protocol import (ADOPT, CLAIM_HELD, COUNTS_FD, DEAD, ERROR, HEALTH_TICK, NOT_RUN, OK,
                        REPLACE, RETIRED, LABEL, RUN_DEADLINE, RUN_HANDED, UNKNOWN)
from ._worker import worker_spec

DOWN_WAIT = 5.0  # how long the server waits for the Down of a worker a caller saw die


def _ran(job: "Handed") -> tuple[int, int]:
    """How a worker's counts page names the handed command while it runs it."""
    ref = job.caller.ref
    return (ref.origin[1], ref.n)


LABEL_EVERY = 0.05  # the observer's label of the server is written at most this often (s)


class Handed:
    """A RUN_ANY: waiting for a worker (``worker`` None), then handed to one
    and due to end by ``ends`` (monotonic seconds; None: no limit)."""

    __slots__ = ("caller", "request", "timeout", "worker", "ends", "timed_out")

    def __init__(self, caller: otpy.From, request: tuple, timeout: float | None) -> None:
        self.caller = caller
        self.request = request
        self.timeout = timeout
        self.worker: otpy.Pid | None = None
        self.ends: float | None = None
        self.timed_out = False


class PoolServer(otpy.GenServer):
    """One pool's server; its state is ``self.book``."""

    def init(self, opts: Any, workers_sup: str,
             page: tuple[int, int, int] | None = None) -> None:
        self.opts = opts
        # the pool's metrics table (_pool_meter), held by the pool's supervisor
        self.meter = None if page is None else PoolMeter(page, opts.worker, opts.size,
                                                         opts.max_overflow)
        self.workers_sup = workers_sup
        self.me = otpy.self()
        info = otpy.process_info(self.me)
        self.supervisor = info["parent"] if info else None
        self.logger = lowlevel.logger(pool=opts.name)
        self.monitors: dict[otpy.Ref, tuple[str, otpy.Pid]] = {}  # ref -> (kind, pid)
        self.worker_monitors: dict[otpy.Pid, otpy.Ref] = {}
        self.pages: dict[otpy.Pid, CountsReader] = {}  # each worker's counts page
        # One monitor per caller that ever checked out or queued, kept until it
        # dies: a checkout then costs no monitor/demonitor round trip each time.
        self.callers: dict[otpy.Pid, otpy.Ref] = {}
        self.subscribers: dict[otpy.Pid, otpy.Ref] = {}
        self.timers: dict[Any, otpy.Ref] = {}  # the book's cancellable timers, by key
        self.todo: collections.deque = collections.deque()  # effects not yet done
        self.doing = False
        self.perform: dict[type, Callable[[Any], None]] = {
            Start: self._do_start, Kill: self._do_kill, Reply: self._do_reply, Cast: self._do_cast,
            Timer: self._do_timer, CancelTimer: self._do_cancel_timer, Watch: self._do_watch,
            Emit: self._do_emit, AwaitDown: self._do_await_down}
        self.caller: otpy.From | None = None  # the call being handled
        self._init_handing()
        self._init_claims()
        self.book = self._adopt()
        if self.meter is not None:
            self.meter.adopt([pid.os_pid for pid in self.book.workers])
            lowlevel.annotate(self.me, otpy_pool=opts.name, otpy_pool_page=page[0],
                              otpy_pool_commands=",".join(command_names(opts.worker)))
        self._do(self.book.begin())
        self._settle_claims()
        # what start_link reports: the first workers of a new pool must start
        self.first_failure = self.book.last_start_error
        if opts.health_interval is not None:
            otpy.send_after(self.me, (HEALTH_TICK,), opts.health_interval)
        self._annotate()

    def _init_handing(self) -> None:
        """RUN_ANY's state, and the throttle of the observer's label."""
        self.handed: dict[otpy.Ref, Handed] = {}  # RUN_ANYs by their call's ref (the token)
        # A worker checks in before it answers: its last checked-in command,
        # until it checks in the next one (it answered this one before it
        # started that) or dies (then, if it had not answered, its caller is
        # told: even with another command handed to it meanwhile).
        self.answering: dict[otpy.Pid, Handed] = {}
        # One timer at a time for all handed commands' deadlines (timers are
        # messages to the zygote: one per command would cost as much as it).
        self.deadline_due: float | None = None
        self.label = ""
        self.labelled_at = 0.0
        self.label_armed = False

    def _init_claims(self) -> None:
        """The claims page (see _claims): a sync pool's free regular workers
        are open to callers' claims; an async pool's are not (their commands
        share a worker: the server's checkouts count its slots)."""
        self.claims = None if self.opts.worker.is_async() else \
            ClaimsPage(self.me, self.opts.size, self.opts.strategy == "lifo")
        self.slot_of: dict[otpy.Pid, int] = {}  # regular worker -> its slot
        self.slot_pid: list[otpy.Pid | None] = [None] * self.opts.size
        self.opened: set[int] = set()  # slots open to claims (the server does not hold them)
        self.contested: set[int] = set()  # slots a thread waits for (a caller held them)

    def _adopt(self) -> PoolBook:
        """A replaced server takes over the workers (and their sessions) alive.
        One that does not answer within DOWN_WAIT (stuck in a command) is
        killed: nobody could reach it any more."""
        children = otpy.DynamicSupervisor.which_children(self.workers_sup)
        numbers = [c.id[1] for c in children if type(c.id) is tuple and len(c.id) == 2
                   and isinstance(c.id[1], int)]
        book = PoolBook(self.opts, first_key=max(numbers, default=0) + 1)
        for child in children:
            if child.pid is None:
                continue
            try:
                sessions = lowlevel.ask(child.pid, (ADOPT, self.me), timeout=DOWN_WAIT)
            except otpy.Exited:
                continue
            except otpy.Timeout:
                self._do_kill(Kill(child.pid, "adoption_timeout"))
                continue
            self._track(child.pid)
            book.adopt(child.pid, sessions, self._reading(child.pid))
        return book

    # ---- the callbacks: a handler method per message of _protocol's table ------------------
    # Calls go to _op_<tag> through lowlevel.dispatch, as every otpy_pool
    # server's do: its value is the answer, an exception is answered as an
    # error, an unknown operation too. Those the book answers by its effects
    # (now or later) return NOREPLY. Casts go to _cast_<tag>, the server's
    # timer messages to _info_<tag>.

    def handle_call(self, request: Any, caller: otpy.From) -> Any:
        self.caller = caller  # for the operations the book answers
        try:
            outcome = lowlevel.dispatch(self, request)
        finally:
            self._after()
        return otpy.NOREPLY if outcome[1] is otpy.NOREPLY else outcome

    def handle_cast(self, request: Any) -> Any:
        self._handle("_cast_", request)

    def handle_info(self, message: Any) -> Any:
        if type(message) is otpy.Down:
            self._down(message)
            self._after()
        else:
            self._handle("_info_", message)

    def _handle(self, prefix: str, message: Any) -> None:
        tag = message[0] if type(message) is tuple and message else None
        handler = getattr(self, prefix + tag, None) if type(tag) is str else None
        if handler is None:  # nobody to answer: said in the log
            self.logger.warning("pool server: unknown message dropped", message=repr(message))
            return
        handler(*message[1:])
        self._after()

    def _down(self, message: otpy.Down) -> None:
        kind, pid = self.monitors.pop(message.ref, ("", None))
        if kind == "worker":
            self._worker_gone(pid, message.reason)
        elif kind == "caller":
            self.callers.pop(pid, None)
            self._do(self.book.caller_down(pid))
        elif kind == "subscriber":
            self.subscribers.pop(pid, None)

    # ---- calls ------------------------------------------------------------------------------

    def _op_checkout(self, token: Any, wait: float | None) -> Any:
        self._take_back_claims()
        self._do(self.book.checkout(self.caller, token, wait))
        return otpy.NOREPLY

    def _op_run_any(self, wait: float | None, timeout: float | None, command: str,
                    args: tuple, kwargs: dict) -> Any:
        """A checkout under the call's ref whose answer is the command, handed
        to the worker (see _do_reply): the caller's one round trip."""
        token = self.caller.ref
        self.handed[token] = Handed(self.caller, (RUN_HANDED, token, command, args, kwargs),
                                    timeout)
        self._take_back_claims()
        self._do(self.book.checkout(self.caller, token, wait))
        return otpy.NOREPLY

    def _op_bind(self, sid: Any, stale: otpy.Pid | None) -> Any:
        stale_dead = stale is not None and stale in self.book.workers and \
            not otpy.is_alive(stale)
        in_flight = {pid: len(page.running()) for pid, page in self.pages.items()}
        self._do(self.book.bind(self.caller, sid, stale, stale_dead, in_flight))
        return otpy.NOREPLY

    def _op_ran(self, pid: otpy.Pid) -> Any:
        self._do(self.book.ran(self.caller, pid))
        return otpy.NOREPLY

    def _op_deadline(self, pid: otpy.Pid, token: Any) -> Any:
        self._do(self.book.deadline(self.caller, pid))
        return otpy.NOREPLY

    def _op_end_session(self, sid: Any) -> Any:
        self._do(self.book.end_session(self.caller, sid))
        return otpy.NOREPLY

    def _op_status(self) -> PoolStatus:
        claimed = 0 if self.claims is None else \
            sum(1 for slot in self.opened if self.claims.claimed(slot))
        return self.book.status([self._reading(pid) for pid in self.book.workers], claimed)

    def _op_workers(self) -> list[otpy.Pid]:
        return list(self.book.workers)

    def _op_worker_of(self, sid: Any) -> otpy.Pid | None:
        return self.book.sessions.get(sid)

    def _op_subscribe(self, pid: otpy.Pid) -> None:
        if pid not in self.subscribers:
            mref = self.subscribers[pid] = otpy.monitor(pid)
            self.monitors[mref] = ("subscriber", pid)

    def _op_unsubscribe(self, pid: otpy.Pid) -> None:
        mref = self.subscribers.pop(pid, None)
        if mref is not None:
            self.monitors.pop(mref, None)
            otpy.demonitor(mref, flush=True)

    def _op_settings(self) -> Settings:
        worker = self.opts.worker
        return Settings(self.opts.command_timeout, self.opts.checkout_timeout, self.supervisor,
                        self.opts.size + self.opts.max_overflow,
                        worker.cancel_grace if worker.is_async() else None)

    def _op_claims(self) -> ClaimsAddress | None:
        return None if self.claims is None else self.claims.address

    def _op_first_start(self) -> BaseException | None:
        """Why the first workers of this server could not start (None: they did)."""
        return self.first_failure

    # ---- casts ----------------------------------------------------------------------------

    def _cast_checkin(self, token: Any, how: str) -> None:
        job = self.handed.get(token)
        if job is not None and not job.timed_out:  # its worker ran it, answers next
            del self.handed[token]
            self.answering[job.worker] = job
        entry = self.book.checkouts.get(token)
        if how == DEAD and entry is not None and otpy.is_alive(entry[0]):
            how = REPLACE  # the holder's error came from elsewhere: its state is unknown
        self._do(self.book.checkin(token, how))

    def _cast_cancel(self, token: Any) -> None:
        job = self.handed.get(token)
        if job is not None:
            if job.worker is not None:
                return  # handed over: it runs, its worker checks in, the answer is dropped
            del self.handed[token]
        self._do(self.book.cancel(token))

    def _cast_logged(self, pid: otpy.Pid, sid: Any, entry: tuple) -> None:
        self._do(self.book.logged(pid, sid, entry))

    def _cast_worn(self, pid: otpy.Pid) -> None:
        self._do(self.book.worn(pid))

    def _cast_replayed(self, pid: otpy.Pid, sid: Any, cause: Any) -> None:
        self._do(self.book.replayed(pid, sid, cause))

    def _cast_timed_out(self, pid: otpy.Pid) -> None:
        self._do(self.book.timed_out(pid))

    def _cast_healthy(self, pid: otpy.Pid, token: Any, healthy: bool, detail: Any) -> None:
        self._do(self.book.healthy(pid, token, healthy, detail))

    # ---- the server's timers -------------------------------------------------------------------

    def _info_expire(self, token: Any) -> None:
        self.timers.pop(token, None)
        self._do(self.book.expire(token))

    def _info_retry_start(self) -> None:
        self._do(self.book.retry_due())

    def _info_fill(self) -> None:
        self._do(self.book.fill_due())

    def _info_overflow_idle(self, pid: otpy.Pid, stamp: int) -> None:
        self._do(self.book.overflow_idle(pid, stamp))

    def _info_health_tick(self) -> None:
        self._do(self.book.health_tick({pid: self._reading(pid) for pid in self.book.workers}))

    def _info_health_late(self, pid: otpy.Pid, token: Any) -> None:
        self._do(self.book.health_late(pid, token, self._reading(pid)))

    def _info_run_deadline(self) -> None:
        """Handed commands past their timeout: the book kills (and counts, and
        replaces) their workers; the answer after the Down is CommandTimeout."""
        self.deadline_due = None
        now = time.monotonic()
        for job in list(self.handed.values()):
            if job.ends is not None and not job.timed_out and job.ends <= now:
                job.timed_out = True
                self._do(self.book.deadline(job.caller, job.worker))
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        """The timer for the earliest deadline of a handed command, if none is
        armed for an earlier one."""
        ends = [job.ends for job in self.handed.values()
                if job.ends is not None and not job.timed_out]
        if ends and (self.deadline_due is None or min(ends) < self.deadline_due):
            self.deadline_due = min(ends)
            otpy.send_after(self.me, (RUN_DEADLINE,), max(0.0, self.deadline_due -
                                                          time.monotonic()))

    def _info_claim_held(self, slot: int) -> None:
        """A slot a caller held is the server's now: if its worker was held
        by that claim in the book, it is free again (for the queue first)."""
        self.contested.discard(slot)
        pid = self.slot_pid[slot]
        if pid is not None and claim_token(pid) in self.book.checkouts:
            self._do(self.book.released(pid))

    def _info_label(self) -> None:
        self.label_armed = False
        self._annotate()

    # ---- effects -----------------------------------------------------------------------------

    def _do(self, effects: list) -> None:
        """Do the book's effects in order. An effect that feeds the book an
        event (a start's outcome, a Down taken) queues that event's effects
        behind the rest."""
        self.todo.extend(effects)
        if self.doing:
            return
        self.doing = True
        try:
            while self.todo:
                effect = self.todo.popleft()
                self.perform[type(effect)](effect)
        except BaseException:
            self.todo.clear()
            raise
        finally:
            self.doing = False

    def _do_start(self, effect: Start) -> None:
        """Start one worker (the server waits for its init)."""
        slot = None if self.meter is None else self.meter.claim()
        spec = worker_spec(("worker", effect.key), self.opts, self.me, slot)
        try:
            pid = otpy.DynamicSupervisor.start_child(self.workers_sup, spec)
        except Exception as exc:
            if self.meter is not None:
                self.meter.started(slot, None)
            error = start_error(exc)
            lowlevel.keep_traceback(error)  # it travels to callers and subscribers
            effects = self.book.start_failed(effect.key, error)
            self.logger.warning("pool worker start failed",
                                error=f"{type(error).__name__}: {error}",
                                exception=lowlevel.traceback_text(error),
                                in_a_row=self.book.start_failures,
                                workers=len(self.book.workers), size=self.opts.size)
            self._do(effects)
            return
        assert pid is not None  # a WorkerProcess's init never returns IGNORE
        if self.meter is not None:
            self.meter.started(slot, pid.os_pid)
        self._track(pid)
        self._do(self.book.worker_up(effect.key, pid))

    def _track(self, pid: otpy.Pid) -> None:
        """Monitor a worker and map its counts page."""
        mref = self.worker_monitors[pid] = otpy.monitor(pid)
        self.monitors[mref] = ("worker", pid)
        try:
            self.pages[pid] = CountsReader(pid.os_pid,
                                           lowlevel.ask(pid, (COUNTS_FD,), timeout=DOWN_WAIT),
                                           self.opts.max_concurrency)
        except (otpy.Exited, otpy.Timeout, OSError):
            # dead (its Down follows; OSError: it died between answering and
            # our opening its fd) or stuck: it has run nothing we could count
            pass

    def _reading(self, pid: otpy.Pid) -> Reading | None:
        page = self.pages.get(pid)
        if page is None:
            return None
        ran, failed = page.read()
        return Reading(ran, failed, page.running(), page.uncounted())

    def _worker_gone(self, pid: otpy.Pid, reason: Any) -> None:
        """Its Down: its counts page read a last time (the mapping outlives it)."""
        self.monitors.pop(self.worker_monitors.pop(pid, None), None)
        final = self._reading(pid)
        page = self.pages.pop(pid, None)
        if page is not None:
            page.close()
        if self.meter is not None:
            self.meter.gone(pid.os_pid)
        if self.handed or self.answering:
            self._handed_lost(pid, reason, final)
        self._do(self.book.worker_down(pid, reason, final))

    def _handed_lost(self, pid: otpy.Pid, reason: Any, final: Reading | None) -> None:
        """The worker died with commands handed to it unanswered: WorkerCrashed
        for the one it was running (or if nobody can tell: at most once),
        NOT_RUN for one it never started (its caller runs it again). One it
        had answered already gets a second answer its caller drops."""
        running = UNKNOWN if final is None else final.running
        answering = self.answering.pop(pid, None)
        if answering is not None and running != UNKNOWN and _ran(answering) in running:
            otpy.reply(answering.caller, (ERROR, WorkerCrashed(reason)))
        for token in [t for t, job in self.handed.items()
                      if job.worker == pid and not job.timed_out]:
            job = self.handed.pop(token)
            never = reason in ("noproc", "shutdown") or reason == RETIRED or (
                running != UNKNOWN and _ran(job) not in running)
            otpy.reply(job.caller, (NOT_RUN,) if never else (ERROR, WorkerCrashed(reason)))

    def _do_await_down(self, effect: AwaitDown) -> None:
        """A caller saw the worker die, or it was killed: take its Down now."""
        mref = self.worker_monitors.get(effect.pid)
        if mref is None:
            return  # taken already
        try:
            reason = lowlevel.await_down(mref, DOWN_WAIT)
        except otpy.Timeout:  # alive after all (a caller's mistake): leave it be
            self._do(self.book.down_late(effect.pid))
            return
        self._worker_gone(effect.pid, reason)

    def _do_kill(self, effect: Kill) -> None:
        """A kill on purpose (it cannot be asked: it is stuck, or its state is
        unknown) is a planned exit, ``("shutdown", why)``: no crash report, a
        warning here; the caller's error says the rest."""
        self.logger.warning("pool worker killed", worker=repr(effect.pid), why=effect.why)
        lowlevel.kill(effect.pid, ("shutdown", effect.why))

    def _do_reply(self, effect: Reply) -> None:
        job = self.handed.get(effect.caller.ref) if self.handed else None
        if job is None:
            otpy.reply(effect.caller, effect.answer)
        elif job.worker is None and effect.answer[0] == OK:
            self._hand(job, effect.answer[1])
        else:  # refused (PoolTimeout, ...), or the deadline's answer after the Down
            del self.handed[effect.caller.ref]
            answer = effect.answer
            if job.timed_out:
                answer = (ERROR, CommandTimeout(
                    f"command {job.request[2]!r} ran past {duration(job.timeout)}; "
                    "its worker was replaced"))
            otpy.reply(job.caller, answer)

    def _hand(self, job: Handed, worker: otpy.Pid) -> None:
        """The book gave RUN_ANY a worker: the command goes to it in the
        caller's call, so the worker answers the caller directly."""
        job.worker = worker
        otpy.send(worker, (lowlevel.CALL, job.caller, job.request))
        if job.timeout is not None:
            job.ends = time.monotonic() + job.timeout
            if self.deadline_due is None or job.ends < self.deadline_due:
                self._arm_deadline()

    def _do_cast(self, effect: Cast) -> None:
        otpy.cast(effect.pid, effect.message)

    def _do_timer(self, effect: Timer) -> None:
        ref = otpy.send_after(self.me, effect.message, effect.delay)
        if effect.key is not None:
            self.timers[effect.key] = ref

    def _do_cancel_timer(self, effect: CancelTimer) -> None:
        ref = self.timers.pop(effect.key, None)
        if ref is not None:
            otpy.cancel_timer(ref)

    def _do_watch(self, effect: Watch) -> None:
        if effect.pid not in self.callers:
            mref = self.callers[effect.pid] = otpy.monitor(effect.pid)
            self.monitors[mref] = ("caller", effect.pid)

    def _do_emit(self, effect: Emit) -> None:
        if lowlevel.log_enabled("debug"):
            self.logger.debug("pool." + effect.kind, worker=repr(effect.worker),
                              session=repr(effect.session),
                              detail=None if effect.detail is None else repr(effect.detail))
        if self.subscribers:
            event = PoolEvent(effect.kind, effect.worker, effect.session, effect.detail,
                              time.time())
            for pid in list(self.subscribers):
                otpy.send(pid, event)

    # ---- claims (see _claims) --------------------------------------------------------------

    def _after(self) -> None:
        """After each message: the claims page agrees with the book, and the
        observer's label and the metrics table are updated."""
        self._settle_claims()
        self._annotate()

    def _settle_claims(self) -> None:
        """Each regular worker in service has a slot (one leaving service
        gives it up); a slot is open exactly while its worker is free in the
        book and no caller is queued (queued callers come first: a worker
        that comes free is theirs)."""
        if self.claims is None:
            return
        book = self.book
        for slot, pid in enumerate(self.slot_pid):
            w = None if pid is None else book.workers.get(pid)
            if pid is not None and (w is None or w.state not in IN_SERVICE):
                self._hold(slot)
                self.slot_pid[slot] = None
                del self.slot_of[pid]
        if None in self.slot_pid:
            for pid, w in book.workers.items():
                if not w.overflow and w.state in IN_SERVICE and pid not in self.slot_of:
                    slot = self.slot_pid.index(None)
                    self.slot_pid[slot], self.slot_of[pid] = pid, slot
                    if None not in self.slot_pid:
                        break
        free = set() if book.queue else set(book.idle)
        for slot in [s for s in self.opened if self.slot_pid[s] not in free]:
            self._hold(slot)
        for pid in free:
            slot = self.slot_of.get(pid)
            if slot is not None and slot not in self.opened and slot not in self.contested:
                self.claims.open(slot, pid)
                self.opened.add(slot)

    def _take_back_claims(self) -> None:
        """Before the book gives out a free worker: every open slot is the
        server's again, and a worker a caller holds by a claim meanwhile is
        held in the book too until the claim ends (CLAIM_HELD)."""
        claimed = [self.slot_pid[slot] for slot in list(self.opened) if not self._hold(slot)]
        if claimed:
            self._do(self.book.claimed(claimed))

    def _hold(self, slot: int) -> bool:
        """Take an open slot back: False if a caller holds it (a thread then
        waits for it, and CLAIM_HELD says when it is ours)."""
        if slot not in self.opened:
            return True
        self.opened.discard(slot)
        assert self.claims is not None
        if self.claims.hold(slot):
            return True
        self.contested.add(slot)
        me = self.me
        self.claims.wait_for(slot, lambda held: otpy.send(me, (CLAIM_HELD, held)))
        return False

    def _annotate(self) -> None:
        """The observer's label (in use n/m, queued q), written at most every
        LABEL_EVERY: each write is a message to the zygote, which a busy
        pool would otherwise send twice per command. First, after each
        message, the metrics table's figures (shared memory: no message)."""
        if self.meter is not None:
            book = self.book
            idle, busy = len(book.idle), len(book.checkouts)
            self.meter.publish((self.opts.size, book.overflow_count(), idle, busy,
                                max(0, len(book.workers) - idle - busy), len(book.queue),
                                len(book.sessions), book.owed,
                                int(book.owed > 0 and book.start_failures > 0)), book.counts)
        label = self.book.label()
        if label == self.label:
            return
        now = time.monotonic()
        if now - self.labelled_at >= LABEL_EVERY:
            self.label = label
            self.labelled_at = now
            lowlevel.annotate(self.me, behaviour=label)
        elif not self.label_armed:
            self.label_armed = True
            otpy.send_after(self.me, (LABEL,), LABEL_EVERY)
