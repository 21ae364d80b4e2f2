"""Workers: the user's class (``Worker``, ``@command``, ``Session``) and the
GenServer that hosts one instance of it in its own process.

The worker process answers the pool's callers directly: a command is one
round trip, caller -> worker -> caller. It counts what it ran in shared
memory the server reads (``_counters``), so counting sends nothing. Only a
``replay=True`` command that succeeded also tells the pool's server (one
cast, before the reply) what to replay: so the server's replay log is
complete whatever happens to the worker next. A worker past ``max_commands``
or ``max_memory`` tells the server once, to be replaced when idle.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from typing import Any, Callable, ClassVar, TypeVar

import otpy
from otpy import lowlevel

from ._counters import COMMANDS, ERRORS, RUN_COUNTED, RUN_N, RUN_ORIGIN, WorkerCounts
from ._errors import UnknownCommand
from ._pool_meter import WorkerMeter
from ._protocol import (CHECKIN, ERROR, FUNCTION, HEALTHY, LOGGED, LOST, MOVED, OK, REPLAYED,
                        RETIRED, RETURN, RUN, UNBOUND, WORN)

F = TypeVar("F", bound=Callable[..., Any])

#: what a command's failure is (index: whether it is an executor's function):
#: a function calling sys.exit fails its task, as in concurrent.futures; a
#: command's sys.exit ends its worker
_CAUGHT: tuple = (Exception, (Exception, SystemExit))

#: keyword arguments ``execute`` keeps for itself: no command may take them
RESERVED = ("session", "timeout", "checkout_timeout")


@dataclasses.dataclass
class Session:
    """One session's view inside its worker: ``id`` (None for a command run
    without a session) and ``state``, a dict no other session can reach."""

    id: Any
    state: dict = dataclasses.field(default_factory=dict)


def command(fn: F | None = None, *, replay: bool = False) -> Any:
    """Mark a Worker method as a command callers may execute.

    ``replay=True``: the command builds its session's state; after the
    session's worker dies, its successful replay commands run again, in
    order, on the new worker. Commands without the flag must not change
    ``session.state``.
    """
    if not isinstance(replay, bool):
        raise TypeError(f"command(replay=...) must be a bool, not {replay!r}")

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@command marks a method, not {f!r}")
        f._otpy_pool_command = {"replay": replay}  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


class Worker:
    """Subclass with ``init`` and ``@command`` methods; the pool runs one
    instance per worker process. ``health_check`` and ``terminate`` are optional.

    Any of them may be an ``async def``: the worker then runs an event loop
    (see _async_worker), up to ``max_concurrency`` commands at once."""

    #: seconds ``init`` may take (a model load, say) before the start fails
    #: (None or ``math.inf``: no limit)
    init_timeout: ClassVar[float | None] = 60.0
    #: seconds a planned stop waits for the running command and ``terminate``
    #: before the worker is killed (None or ``math.inf``: no limit)
    shutdown_timeout: ClassVar[float | None] = 5.0
    #: commands an async worker runs at once (a session's still one at a
    #: time, in order); the pool's ``max_concurrency`` option overrides it
    max_concurrency: ClassVar[int] = 1
    #: seconds an async worker's command, cancelled at its deadline, has to
    #: end before its worker is killed
    cancel_grace: ClassVar[float] = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if getattr(value, "_otpy_pool_command", None) is not None:
                _check_parameters(cls, name, value)

    def init(self, *args: Any, **kwargs: Any) -> None:
        """Runs once, in the worker process, with the pool's ``args``/``kwargs``."""

    def health_check(self) -> Any:
        """Raise or return False when unhealthy (runs every ``health_interval``)."""
        return True

    def terminate(self, reason: Any) -> None:
        """Runs when the worker stops on purpose, with the stop's reason:
        ``"shutdown"`` when the pool (or a supervisor above it) stops,
        ``("shutdown", "otpy_pool.retired")`` when the pool replaces it. The
        running command finishes first; both together get the class's
        ``shutdown_timeout``, then the worker is killed. Never after a kill."""

    @classmethod
    def is_async(cls) -> bool:
        """Whether a command, ``init``, ``health_check`` or ``terminate`` is an
        ``async def``: such a worker runs an event loop."""
        names = [*cls.commands(), "init", "health_check", "terminate"]
        return any(inspect.iscoroutinefunction(getattr(cls, name, None)) for name in names)

    @classmethod
    def commands(cls) -> dict[str, bool]:
        """The command names of this class, each with its replay flag."""
        found = {}
        for klass in reversed(cls.__mro__):  # a subclass's definition wins
            for name, value in vars(klass).items():
                mark = getattr(value, "_otpy_pool_command", None)
                if mark is not None:
                    found[name] = mark["replay"]
                else:
                    found.pop(name, None)
        return found


def _check_parameters(cls: type, name: str, fn: Any) -> None:
    """Refused when the class is defined, not at every call: a command that
    takes no Session (the first parameter after self, named anything), or a
    keyword argument ``execute`` keeps for itself (it would never reach the
    command)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): nothing to check
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise TypeError(f"{cls.__qualname__}.{name}: a command takes the Session after self "
                        f"(def {name}(self, session, ...))")
    for p in parameters[2:]:
        if p.name in RESERVED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{cls.__qualname__}.{name}: parameter {p.name!r} is one of "
                            f"execute's own keywords ({', '.join(RESERVED)}): rename it")


class WorkerProcess(otpy.GenServer):
    """Hosts one Worker instance; runs its commands one at a time. Its
    messages are in _protocol's table, each handled by one method."""

    def init(self, worker_cls: type[Worker], args: tuple, kwargs: dict, server: otpy.Pid,
             limits: tuple[int | None, int | None],
             meter: tuple[int, int, int, int] | None = None) -> None:
        self._setup(worker_cls, server, limits, slots=1, meter=meter)
        self.user.init(*args, **kwargs)

    def _setup(self, worker_cls: type[Worker], server: otpy.Pid,
               limits: tuple[int | None, int | None], slots: int,
               meter: tuple[int, int, int, int] | None = None) -> None:
        """Everything but the user's ``init``: ``slots`` commands may run at
        once; ``meter``: its slot in the pool's metrics table."""
        # A planned stop (the supervisor's exit signal "shutdown") then reaches
        # the loop as a message, after the running command: terminate runs.
        otpy.trap_exit(True)
        self.me = otpy.self()
        self.server = server
        self.max_commands, self.max_memory = limits
        self.check_wear = self.max_commands is not None or self.max_memory is not None
        self.counts = WorkerCounts(slots)
        self.count = self.counts.view
        self.table = worker_cls.commands()
        # its slot in the pool's metrics table (_pool_meter); None: not counted there
        self.meter = None if meter is None else WorkerMeter(meter, worker_cls)
        self.sessions: dict[Any, Session] = {}
        self.replay_logs: dict[Any, list] = {}
        self.lost: dict[Any, BaseException] = {}  # sessions whose replay failed: why
        self.caller: otpy.From | None = None  # the call being handled
        self.process = None
        if self.max_memory is not None:
            import psutil

            self.process = psutil.Process()
        lowlevel.annotate(self.me, behaviour=f"otpy_pool.Worker:{worker_cls.__qualname__}")
        self.user = worker_cls.__new__(worker_cls)

    # Calls go to _op_<tag> through lowlevel.dispatch, casts to _cast_<tag>
    # (see _protocol); an unknown call is answered with an error, never a
    # crash of the worker.

    def handle_call(self, request: Any, caller: otpy.From) -> Any:
        self.caller = caller  # RUN answers by itself
        outcome = lowlevel.dispatch(self, request)
        return otpy.NOREPLY if outcome[1] is otpy.NOREPLY else outcome

    def handle_cast(self, request: Any) -> Any:
        tag = request[0] if type(request) is tuple and request else None
        handler = getattr(self, "_cast_" + tag, None) if type(tag) is str else None
        if handler is None:
            lowlevel.logger().warning("pool worker: unknown cast dropped", cast=repr(request))
            return None
        return handler(*request[1:])

    # ---- commands (RUN) ----------------------------------------------------------------

    def _invoke(self, session: Session, name: str, args: tuple, kwargs: dict) -> Any:
        if name == FUNCTION and name not in self.table:  # a stand-in runs them elsewhere
            fn, fargs, fkwargs = args
            return fn(*fargs, **fkwargs)
        if name not in self.table:
            raise UnknownCommand(f"{type(self.user).__name__} has no command {name!r}")
        return getattr(self.user, name)(session, *args, **kwargs)

    def _op_run(self, sid: Any, name: str, args: tuple, kwargs: dict,
                handed: Any = None) -> Any:
        caller = self.caller
        session = self._session(caller, sid, name)
        if session is None:
            return otpy.NOREPLY
        meter = self.meter
        started = None if meter is None else meter.start(name)
        count = self.count
        # Running it, until its reply is sent: after a death, the pool tells
        # this command (WorkerCrashed) from those that never started.
        count[RUN_ORIGIN] = caller.ref.origin[1]
        count[RUN_COUNTED] = 0
        count[RUN_N] = caller.ref.n
        try:
            outcome: tuple = (OK, self._invoke(session, name, args, kwargs))
            if sid is not None and self.table.get(name):
                self._log(sid, (name, args, kwargs))
        except _CAUGHT[name == FUNCTION] as exc:
            outcome = (ERROR, lowlevel.sendable_exception(exc))
            count[ERRORS] += 1
        ended = time.perf_counter_ns()
        count[COMMANDS] += 1  # before the reply: status() after it returned is exact
        count[RUN_COUNTED] = 1
        if self.check_wear and self._worn_out():
            self.check_wear = False  # told once; the server retires it when idle
            otpy.cast(self.server, (WORN, self.me))
        if handed is not None:  # checked in before the answer: the caller's next
            otpy.cast(self.server, (CHECKIN, handed, RETURN))  # call finds it idle
        sent = self._reply(caller, name, outcome)
        count[RUN_N] = 0  # replied: no longer running
        if started is not None:
            meter.done(started, ended, sent and outcome[0] == OK)  # type: ignore[union-attr]
        return otpy.NOREPLY

    def _op_run_handed(self, token: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """A session-less command the server handed over in its caller's call:
        this worker checks itself back in, then answers the caller (so a
        caller's next command reaches the server after the check-in: LIFO
        gives it this worker again)."""
        return self._op_run(None, name, args, kwargs, handed=token)

    def _session(self, caller: otpy.From, sid: Any, name: str) -> Session | None:
        """The command's Session; None if the caller was answered instead
        (the session is not held here, or its replay failed)."""
        if sid is None:
            return Session(None)
        session = self.sessions.get(sid)
        if sid in self.lost:  # its replay failed: this command reports it
            count = self.count
            count[COMMANDS] += 1
            count[ERRORS] += 1
            if self.meter is not None:
                self.meter.failed(name)
            otpy.reply(caller, (LOST, self.lost.pop(sid)))
            return None
        if session is None:
            otpy.reply(caller, (UNBOUND,))  # not (or no longer) bound here: ask the pool
        return session

    def _log(self, sid: Any, entry: tuple) -> None:
        """A replay command ran: its entry joins the session's replay log, here
        and, before the reply, the server's, which outlives this worker."""
        self.replay_logs.setdefault(sid, []).append(entry)
        otpy.cast(self.server, (LOGGED, self.me, sid, entry))

    def _reply(self, caller: otpy.From, name: str, outcome: tuple) -> bool:
        """Answer the command; False if its value could not be sent (an error went)."""
        try:
            otpy.reply(caller, outcome)
            return True
        except otpy.SerializationError as exc:
            if outcome[0] == OK:
                self.count[ERRORS] += 1  # it ended in an error after all: its caller gets one
            otpy.reply(caller, (ERROR, otpy.SerializationError(
                f"command {name!r} returned a value that cannot be sent: {exc}")))
            return False

    def _worn_out(self) -> bool:
        if self.max_commands is not None and self.count[COMMANDS] >= self.max_commands:
            return True
        return self.process is not None and self.process.memory_info().rss > self.max_memory

    def _op_after_running(self) -> None:
        """Answered in turn: once the commands that came before it ended."""

    # ---- from the pool's server ---------------------------------------------------------

    def _op_counts_fd(self) -> int:
        """The server maps our counts page (see _counters)."""
        return self.counts.fd

    def _op_adopt(self, server: otpy.Pid) -> dict:
        """A new pool server takes over: what it must know."""
        self.server = server
        return {sid: list(self.replay_logs.get(sid, ())) for sid in self.sessions}

    def _cast_bind_session(self, sid: Any, log: list | None) -> None:
        session = self._bound(sid, log)
        if session is None:
            return
        error = None
        try:
            for name, args, kwargs in log or ():
                self._invoke(session, name, args, kwargs)
        except Exception as exc:
            error = exc
        self._replayed(sid, log or [], error)

    def _bound(self, sid: Any, log: list | None) -> Session | None:
        """The session is held here anew: its Session, to replay ``log``
        into; None if there is nothing to replay."""
        session = self.sessions[sid] = Session(sid)
        self.lost.pop(sid, None)
        if not log:
            self.replay_logs.pop(sid, None)
            return None
        return session

    def _replayed(self, sid: Any, log: list, error: Exception | None) -> None:
        """The replay ended (``error``: why it failed): the server is told."""
        if error is not None:
            self.sessions[sid] = Session(sid)  # starts empty next time
            self.replay_logs.pop(sid, None)
            self.lost[sid] = lowlevel.sendable_exception(error)
            otpy.cast(self.server, (REPLAYED, self.me, sid, repr(error)))
            return
        self.replay_logs[sid] = list(log)
        otpy.cast(self.server, (REPLAYED, self.me, sid, None))

    def _cast_end(self, sid: Any) -> None:
        for table in (self.sessions, self.replay_logs, self.lost):
            table.pop(sid, None)

    def _cast_health(self, token: Any) -> None:
        try:
            healthy, detail = self.user.health_check() is not False, None
        except Exception as exc:
            healthy, detail = False, repr(exc)
        otpy.cast(self.server, (HEALTHY, self.me, token, healthy, detail))

    def _cast_release(self) -> None:
        """Retired: its sessions are re-bound elsewhere."""
        self.sessions.clear()
        self.replay_logs.clear()
        self.lost.clear()

    def _cast_leave(self) -> otpy.Stop:
        """Retired and idle: answer every command already queued with MOVED
        (they never ran: their callers go to the session's new worker), then
        stop."""
        _move_queued()
        return otpy.Stop(RETIRED)

    def terminate(self, reason: Any) -> None:
        try:
            self.user.terminate(reason)
        except Exception as exc:  # the stop goes on, with its own reason
            lowlevel.logger().warning("worker terminate raised", reason=repr(reason),
                                      error=repr(exc), exception=lowlevel.traceback_text(exc))


def _move_queued() -> None:
    """Answer every RUN already in the mailbox with MOVED: it never ran."""
    while True:
        try:
            message = otpy.receive(timeout=0, match=_queued_run)
        except otpy.Timeout:
            return
        otpy.reply(otpy.From(*message[1]), (MOVED,))


def _queued_run(message: Any) -> bool:
    """A RUN call still in the mailbox."""
    return (type(message) is tuple and len(message) == 3 and message[0] == lowlevel.CALL
            and type(message[2]) is tuple and message[2][:1] == (RUN,))


def worker_spec(key: Any, opts: Any, server: otpy.Pid,
                meter: tuple[int, int, int, int] | None = None) -> otpy.ChildSpec:
    """How the workers' DynamicSupervisor starts one worker (``opts``: the
    pool's Options; ``meter``: its slot in the pool's metrics table):
    temporary, since the pool's server decides about replacements (and
    counts them)."""
    init_timeout = math.inf if opts.init_timeout is None else opts.init_timeout
    shutdown = "infinity" if opts.shutdown_timeout is None else opts.shutdown_timeout
    process: Any = WorkerProcess
    limits: tuple = (opts.max_commands, opts.max_memory)
    if opts.worker.is_async():
        from ._async_worker import AsyncWorkerProcess

        process = AsyncWorkerProcess
        limits += (opts.max_concurrency,)
    return otpy.ChildSpec(key, process.start_link,
                          args=(opts.worker, opts.args, opts.kwargs, server, limits, meter),
                          kwargs={"timeout": init_timeout},
                          restart="temporary", shutdown=shutdown)
