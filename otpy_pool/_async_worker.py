"""The process that hosts a Worker whose commands (or ``init``,
``health_check``, ``terminate``) are ``async def``: an event loop that runs
up to ``max_concurrency`` commands at once.

It is a WorkerProcess (the same messages, counts page, sessions and replay
logs) whose first message starts an asyncio loop that then reads the
mailbox itself (``otpy.areceive``: the loop never blocks on it). Each
message is handled at once, in the order it came (other messages stay in
the mailbox, for the commands to ``otpy.areceive``); a command becomes a
*job*:

- a session's jobs (its commands, and its BIND_SESSION's replay and END,
  in the order they came) run one at a time, in order; a session-less
  command's job is ready at once;
- a ready job waits for a free *slot* (``max_concurrency`` of them, FIFO),
  then runs as a task; the counts page names the commands in the slots, so
  after a SIGKILL the pool fails those (WorkerCrashed) and runs the jobs
  that had not started on another worker;
- a command's deadline (sent by its caller, see _caller.run_message):
  a job not started by then is answered CommandTimeout and never runs; a
  running one is cancelled (the command sees CancelledError) and answered
  CommandTimeout once it ends. One that does not end within the class's
  ``cancel_grace`` is not answered: its caller has the worker killed.

A sync command on such a worker runs in the loop's thread: nothing else
runs on the worker until it returns.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from typing import Any

import otpy
from otpy import lowlevel

from ._counters import COMMANDS, ERRORS, RUN_COUNTED, RUN_N, RUN_ORIGIN, SLOT
from ._errors import CommandTimeout
from ._protocol import (BIND_SESSION, END, ERROR, HEALTHY, MOVED, OK, RETIRED, RUN, TIMED_OUT,
                        WORN)
from ._worker import Session, Worker, WorkerProcess, _move_queued

WAITING, RUNNING, ANSWERED = "waiting", "running", "answered"


class Job:
    """A command (``kind`` RUN), a session's replay (BIND_SESSION) or its end
    (END), queued until it may run."""

    __slots__ = ("kind", "caller", "sid", "name", "args", "kwargs", "deadline", "state",
                 "timer", "task", "cancelled")

    def __init__(self, kind: str, caller: Any, sid: Any, name: str = "", args: Any = (),
                 kwargs: Any = None, deadline: float | None = None) -> None:
        self.kind, self.caller, self.sid = kind, caller, sid
        self.name, self.args, self.kwargs, self.deadline = name, args, kwargs or {}, deadline
        self.state = WAITING
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.cancelled = False  # by its deadline


class AsyncWorkerProcess(WorkerProcess):
    """Hosts one async Worker instance (see the module's docstring)."""

    def init(self, worker_cls: type[Worker], args: tuple, kwargs: dict, server: otpy.Pid,
             limits: tuple, meter: tuple[int, int, int, int] | None = None) -> None:
        *wear, slots = limits
        self._setup(worker_cls, server, tuple(wear), slots, meter)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.free = collections.deque(range(0, slots * SLOT, SLOT))  # the page's free slots
        self.ready: collections.deque[Job] = collections.deque()  # waiting for a slot
        self.queues: dict[Any, collections.deque[Job]] = {}  # a session's jobs, head first
        self.running: set[Job] = set()
        self.chores: set[asyncio.Task] = set()  # health checks
        self.stopping: Any = None  # the stop's reason, once one is under way
        self.stop_caller: otpy.From | None = None  # otpy.stop()'s, answered once stopped
        self.parent = self._parent()
        self.idle = asyncio.Event()
        self._wait(self.user.init(*args, **kwargs))

    def _wait(self, value: Any) -> Any:
        """``value``, awaited in the loop if it is awaitable (the loop is not running)."""
        if inspect.isawaitable(value):
            return self.loop.run_until_complete(value)
        return value

    # ---- the loop: entered by the first message, left when the worker stops ----------------

    def handle_call(self, request: Any, caller: otpy.From) -> Any:
        return self._enter((lowlevel.CALL, tuple(caller), request))

    def handle_cast(self, request: Any) -> Any:
        return self._enter(("$cast", request))

    def handle_info(self, message: Any) -> Any:
        return self._enter(message)

    def _enter(self, first: Any) -> otpy.Stop:
        reason = self.loop.run_until_complete(self._serve(first))
        if self.stop_caller is not None:  # as a GenServer stops for otpy.stop()
            self.terminate(reason)
            otpy.reply(self.stop_caller, "ok")
            raise otpy.ProcessExit(reason)
        return otpy.Stop(reason)

    async def _serve(self, message: Any) -> Any:
        """Handle messages until a stop: its reason, once the running
        commands ended (a retirement's, or the supervisor's "shutdown")."""
        while self.stopping is None:
            self._on(message)
            if self.stopping is None:
                message = await otpy.areceive(match=_for_the_loop)
        while self.running:
            self.idle.clear()
            await self.idle.wait()
        for chore in self.chores:
            chore.cancel()
        if self.stopping == RETIRED:
            _move_queued()
        return self.stopping

    def _on(self, message: Any) -> None:
        kind = type(message)
        if kind is tuple and message and message[0] == lowlevel.CALL:
            self._call(otpy.From(*message[1]), message[2])
        elif kind is tuple and message and message[0] == "$cast":
            request = message[1]
            tag = request[0] if type(request) is tuple and request else None
            handler = getattr(self, "_acast_" + tag, None) if type(tag) is str else None
            if handler is None:
                lowlevel.logger().warning("pool worker: unknown cast dropped", cast=repr(request))
            else:
                handler(*request[1:])
        elif kind is tuple and message and message[0] == "$stop":
            self.stop_caller = otpy.From(*message[1])
            self._stop(message[2])
        elif kind is otpy.Exit and message.pid == self.parent:
            self._stop(message.reason)  # the supervisor's planned stop: after the commands
        elif kind is otpy.BadMessage:
            _answer_undecodable(message)

    def _parent(self) -> otpy.Pid | None:
        info = otpy.process_info(self.me)
        return info["parent"] if info else None

    def _call(self, caller: otpy.From, request: Any) -> None:
        if type(request) is tuple and request[:1] == (RUN,) and len(request) in (5, 6):
            self._arrived(caller, *request[1:])
        else:
            otpy.reply(caller, lowlevel.dispatch(self, request))

    def _stop(self, reason: Any) -> None:
        """No new job starts; those not started are dropped (their callers
        see the worker's exit: a planned one, so they run elsewhere)."""
        self.stopping = reason
        for job in list(self.ready) + [j for q in self.queues.values() for j in q]:
            self._forget(job)
        self.ready.clear()
        self.queues.clear()

    # ---- jobs ----------------------------------------------------------------------------------

    def _arrived(self, caller: otpy.From, sid: Any, name: str, args: tuple, kwargs: dict,
                 deadline: float | None = None) -> None:
        job = Job(RUN, caller, sid, name, args, kwargs, deadline)
        if deadline is not None:
            # the caller's clock: time.monotonic() (whatever clock the loop keeps)
            job.timer = self.loop.call_later(max(0.0, deadline - time.monotonic()),
                                             self._deadline, job)
        self._queue(job)

    def _queue(self, job: Job) -> None:
        """Ready now if it is session-less or its session's first job."""
        if job.sid is None:
            self.ready.append(job)
        else:
            queue = self.queues.setdefault(job.sid, collections.deque())
            queue.append(job)
            if len(queue) > 1:
                return
            self.ready.append(job)
        self._pump()

    def _pump(self) -> None:
        """Start ready jobs while a slot is free."""
        while self.free and self.ready and self.stopping is None:
            job = self.ready.popleft()
            if job.state == ANSWERED:  # its deadline passed while it waited
                self._next(job)
                continue
            slot = self.free.popleft()
            job.state = RUNNING
            self.running.add(job)
            self.loop.create_task(self._run(job, slot))

    def _next(self, job: Job) -> None:
        """``job`` is done (or will never run): its session's next job is ready."""
        queue = self.queues.get(job.sid) if job.sid is not None else None
        if not queue or queue[0] is not job:
            return
        queue.popleft()
        if queue:
            self.ready.append(queue[0])
        else:
            del self.queues[job.sid]

    def _finished(self, job: Job, slot: int) -> None:
        if job.timer is not None:
            job.timer.cancel()
        self.running.discard(job)
        self.free.append(slot)
        self._next(job)
        if not self.running:
            self.idle.set()
        self._pump()

    def _forget(self, job: Job) -> None:
        """A job that will never start (a running one is answered as it ends)."""
        if job.state == RUNNING:
            return
        if job.timer is not None:
            job.timer.cancel()
        job.state = ANSWERED

    async def _run(self, job: Job, slot: int) -> None:
        try:
            if job.kind == RUN:
                await self._command(job, slot)
            elif job.kind == BIND_SESSION:
                await self._replay(job.sid, job.args)
            else:
                self._end(job.sid)
        except Exception as exc:  # this module's defect (a command's own error is caught):
            # never a caller left waiting: the worker dies, its callers see it
            lowlevel.logger().error("pool worker: a job failed", error=repr(exc))
            lowlevel.kill(self.me, ("error", f"async worker: {exc!r}"))
        finally:
            self._finished(job, slot)

    # ---- a command's run -------------------------------------------------------------------------

    async def _command(self, job: Job, slot: int) -> None:
        session = self._session(job.caller, job.sid, job.name)
        if session is None:
            return
        count, ref = self.count, job.caller.ref
        count[RUN_ORIGIN + slot] = ref.origin[1]
        count[RUN_COUNTED + slot] = 0
        count[RUN_N + slot] = ref.n
        meter = self.meter  # the pool's metrics: outcomes and durations (see _pool_meter)
        started = None if meter is None else meter.start(job.name)
        outcome = await self._outcome(job, session)
        ended = time.perf_counter_ns()
        count[COMMANDS] += 1
        count[RUN_COUNTED + slot] = 1
        if self.check_wear and self._worn_out():
            self.check_wear = False  # told once; the server retires it when idle
            otpy.cast(self.server, (WORN, self.me))
        sent = False
        if job.state != ANSWERED:
            job.state = ANSWERED
            sent = self._reply(job.caller, job.name, outcome)
        count[RUN_N + slot] = 0
        if started is not None:
            meter.done(started, ended, sent and outcome[0] == OK)  # type: ignore[union-attr]

    async def _outcome(self, job: Job, session: Session) -> tuple:
        """The command's outcome: its value, its error, or CommandTimeout if
        its deadline cancelled it (whatever it did then)."""
        outcome: tuple = (ERROR, None)
        job.task = asyncio.current_task()  # what its deadline cancels, from now on
        try:
            if not job.cancelled:  # (its deadline came before its task's first step)
                outcome = (OK, await _value(self._invoke(session, job.name, job.args,
                                                         job.kwargs)))
        except asyncio.CancelledError:
            if not job.cancelled:
                raise  # not ours: the loop is going away
        except Exception as exc:
            outcome = (ERROR, lowlevel.sendable_exception(exc))
        if job.cancelled:
            otpy.cast(self.server, (TIMED_OUT, self.me))
            outcome = (ERROR, CommandTimeout(
                f"command {job.name!r} ran past its deadline and was cancelled"))
        elif outcome[0] == OK and job.sid is not None and self.table.get(job.name):
            self._log(job.sid, (job.name, job.args, job.kwargs))
        if outcome[0] == ERROR:
            self.count[ERRORS] += 1
        return outcome

    def _deadline(self, job: Job) -> None:
        """A job's deadline: cancel it if it runs; answer it if it waits."""
        job.timer = None
        if job.state == RUNNING:
            job.cancelled = True
            if job.task is not None:
                job.task.cancel()
        elif job.state == WAITING:
            job.state = ANSWERED
            otpy.cast(self.server, (TIMED_OUT, self.me))
            otpy.reply(job.caller, (ERROR, CommandTimeout(
                f"command {job.name!r} did not start before its deadline: "
                f"the worker ran {len(self.running)} commands")))

    # ---- sessions ----------------------------------------------------------------------------

    def _acast_bind_session(self, sid: Any, log: list | None) -> None:
        self._queue(Job(BIND_SESSION, None, sid, args=log))

    def _acast_end(self, sid: Any) -> None:
        self._queue(Job(END, None, sid))

    def _end(self, sid: Any) -> None:
        WorkerProcess._cast_end(self, sid)

    async def _replay(self, sid: Any, log: list | None) -> None:
        """As WorkerProcess._cast_bind_session, each entry awaited."""
        session = self._bound(sid, log)
        if session is None:
            return
        error = None
        try:
            for name, args, kwargs in log or ():
                await _value(self._invoke(session, name, args, kwargs))
        except Exception as exc:
            error = exc
        self._replayed(sid, log or [], error)

    def _acast_release(self) -> None:
        """Its sessions are re-bound elsewhere: their queued commands will be
        answered UNBOUND, their queued replays and ends are moot."""
        self._cast_release()
        for queue in self.queues.values():
            for job in queue:
                if job.kind != RUN and job.state == WAITING:
                    job.state = ANSWERED

    def _acast_leave(self) -> None:
        """Retired and idle: the jobs not started are answered MOVED (they
        run on the session's new worker), the running ones end, then it stops."""
        for job in list(self.ready) + [j for q in self.queues.values() for j in q]:
            if job.kind == RUN and job.state == WAITING:  # (a session's first is in both)
                job.state = ANSWERED
                otpy.reply(job.caller, (MOVED,))
        self._stop(RETIRED)

    def _acast_health(self, token: Any) -> None:
        chore = self.loop.create_task(self._health(token))
        self.chores.add(chore)
        chore.add_done_callback(self.chores.discard)

    async def _health(self, token: Any) -> None:
        try:
            healthy, detail = await _value(self.user.health_check()) is not False, None
        except Exception as exc:
            healthy, detail = False, repr(exc)
        otpy.cast(self.server, (HEALTHY, self.me, token, healthy, detail))

    def terminate(self, reason: Any) -> None:
        try:
            self._wait(self.user.terminate(reason))
        except Exception as exc:  # the stop goes on, with its own reason
            lowlevel.logger().warning("worker terminate raised", reason=repr(reason),
                                      error=repr(exc), exception=lowlevel.traceback_text(exc))
        finally:
            self.loop.close()


def _for_the_loop(message: Any) -> bool:
    """The messages the loop handles: calls, casts, a stop, exit signals and
    what could not be decoded. Any other message stays in the mailbox for
    the commands (``otpy.areceive`` in a command: the loop does not take it)."""
    kind = type(message)
    if kind is tuple:
        return bool(message) and message[0] in (lowlevel.CALL, "$cast", "$stop")
    return kind is otpy.Exit or kind is otpy.BadMessage


async def _value(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _answer_undecodable(message: Any) -> None:
    """A call that could not be decoded is answered with the error."""
    term, problems = lowlevel.salvage(message)
    if type(term) is tuple and len(term) == 3 and term[0] == lowlevel.CALL and \
            type(term[1]) is tuple and len(term[1]) == 2:
        lowlevel.reply_error(otpy.From(*term[1]), otpy.SerializationError(
            f"the worker could not decode the request: {'; '.join(problems) or message.error}"))
