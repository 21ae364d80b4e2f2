"""``Pool``: the handle programs use, and how a pool's subtree starts.

A handle is the pool server's registered name plus the namespace it was
started in; it is picklable and works from every thread and otpy process of
the program. It caches session -> worker bindings per OS process, so a bound
session's command is one round trip to its worker.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
from typing import Any, AsyncIterator, Iterator

import otpy
from otpy import lowlevel
from otpy.lowlevel import Restart

from . import _caller, _claims
from ._caller import RETRIES, UNSET
from ._calls import NotRun, check_batch, check_command, check_session
from ._errors import PoolError
from ._io import arun, run
from ._pipeline import run_batch
from ._pool_meter import hold_page
from ._pool_options import DEFAULTS, PoolStatus, Settings, make_options
from ._pool_server import PoolServer
from ._protocol import (CHECKIN, END_SESSION, FIRST_START, FUNCTION, OK, STATUS, SUBSCRIBE,
                        UNSUBSCRIBE, WORKER_OF, WORKERS)
from ._worker import Worker

_WINDOW = 64  # execute_many: commands outstanding at once, by default


def _start_subtree(opts: Any) -> otpy.Pid:
    """The pool's supervisor: the workers' DynamicSupervisor, then the server
    (rest_for_one: a new workers' supervisor means a new server; a new server
    adopts the workers alive).

    A new pool whose first workers cannot start fails here, with the init's
    error. A server restarted later never fails for that: a worker that
    cannot start is retried while the others serve (degraded, never dead)."""
    workers = f"{opts.name}.workers"
    # the server starts the first workers one after the other, each within init_timeout
    first = 0 if opts.lazy else opts.size
    wait = math.inf if opts.init_timeout is None else first * opts.init_timeout + 30.0
    taken = otpy.whereis(opts.name)
    if taken is not None:
        raise otpy.AlreadyStarted(opts.name, taken, f"{opts.name!r} is already registered "
                                                    f"(as {taken!r}): a pool needs its name")
    try:
        sup = otpy.Supervisor.start_link([
            otpy.DynamicSupervisor.child_spec(id="workers", name=workers, max_restarts=10,
                                              max_seconds=5.0),
            otpy.ChildSpec("server", _start_server, args=(opts, workers, wait), shutdown=5.0),
        ], strategy="rest_for_one", max_restarts=5, max_seconds=5.0, timeout=wait + 10.0,
            name=f"{opts.name}.sup")  # named after the pool, for the observer and its users
    except otpy.AlreadyStarted as exc:  # another pool of that name (or one starting)
        raise otpy.AlreadyStarted(opts.name, exc.pid, f"a pool named {opts.name!r} is "
                                                      f"already running ({exc.pid!r})") from None
    server = next(c.pid for c in otpy.Supervisor.which_children(sup) if c.id == "server")
    failure = lowlevel.ask(server, (FIRST_START,))
    if failure is not None:
        otpy.unlink(sup)
        otpy.Supervisor.stop(sup, "shutdown")
        raise otpy.StartError(failure, f"pool {opts.name!r}: a worker could not start: "
                                       f"{type(failure).__name__}: {failure}") from failure
    return sup


def _start_server(opts: Any, workers: str, wait: float) -> otpy.Pid | None:
    """The server's start function, run by the pool's supervisor, which
    therefore holds the pool's metrics page (_pool_meter): a restarted server
    gets the same one, and its counts go on."""
    page = hold_page(opts.name, opts.worker, opts.size, opts.max_overflow)
    return PoolServer.start_link(opts, workers, page, name=opts.name, timeout=wait)


class Pool:
    """A handle on a running pool: ``Pool("name")``, or what ``start_link`` returns."""

    def __init__(self, name: str, namespace: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a pool is named by a non-empty str, not {name!r}")
        self.name = name
        self.namespace = lowlevel.current_namespace() if namespace is None else namespace

    def __reduce__(self):
        return (Pool, (self.name, self.namespace))

    def __repr__(self) -> str:
        return f"<Pool {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pool) and (self.name, self.namespace) == (other.name,
                                                                             other.namespace)

    def __hash__(self) -> int:
        return hash((self.name, self.namespace))

    # ---- starting ---------------------------------------------------------------

    @staticmethod
    def _options(worker: Any, args: Any, kwargs: Any, name: str | None, options: dict) -> Any:
        if name is None:
            name = f"otpy_pool.{getattr(worker, '__qualname__', 'pool')}.{secrets.token_hex(4)}"
        elif not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        return make_options(worker, args, kwargs, name, **options)

    @classmethod
    def start_link(cls, worker: type[Worker], args: tuple = (), kwargs: dict | None = None, *,
                   name: str | None = None, size: int | None = None, max_overflow: int = 0,
                   overflow_idle: float | None = 10.0, lazy: bool = False,
                   strategy: str = "lifo", checkout_timeout: float | None = 5.0,
                   max_queue: int | None = None, command_timeout: float | None = None,
                   health_interval: float | None = None, health_timeout: float | None = 5.0,
                   max_commands: int | None = None, max_memory: int | None = None,
                   restart_backoff: tuple[float, float] = (0.1, 30.0),
                   placement: Any = None, max_concurrency: int | None = None) -> "Pool":
        """Start the pool's subtree linked to the caller; returns its handle
        once the first workers are up (StartError if they cannot start).
        Unnamed pools get a generated name (``handle.name``). The options are
        _pool_options.OPTIONS (this signature is held to it by a test);
        ``placement``: where workers run (None: local processes; a
        ``RayPlacement``: Ray actors, see docs/distributed.md);
        ``max_concurrency``: commands one async worker runs at once (None:
        the Worker class's, see docs/pool.md's "Async workers")."""
        options = {key: value for key, value in locals().items() if key in DEFAULTS}
        opts = cls._options(worker, args, kwargs, name, options)
        _start_subtree(opts)
        return cls(opts.name)

    @classmethod
    def child_spec(cls, worker: type[Worker], args: tuple = (), kwargs: dict | None = None, *,
                   name: str | None = None, id: Any = None, restart: Restart = "permanent",
                   **options: Any) -> otpy.ChildSpec:
        """A ChildSpec running the pool (with the options of ``start_link``)
        under another supervisor; ``Pool(name)`` reaches it."""
        opts = cls._options(worker, args, kwargs, name, options)
        return otpy.ChildSpec(id if id is not None else opts.name, _start_subtree, args=(opts,),
                              restart=restart, shutdown="infinity", type="supervisor")

    # ---- reaching the server ---------------------------------------------------------

    def _server(self) -> otpy.Pid:
        if lowlevel.current_namespace() == self.namespace:
            return lowlevel.resolve(self.name)
        lowlevel.enter_namespace(self.namespace)
        try:
            return lowlevel.resolve(self.name)
        finally:
            lowlevel.leave_namespace(self.namespace)

    def _ask(self, *request: Any) -> Any:
        """One operation on the server, from a thread; its error raised here."""
        return run(_caller.ask(self, *request))

    def _cast(self, request: tuple) -> None:
        try:
            otpy.cast(self._server(), request)
        except otpy.NoProc:
            pass

    def _key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def _settings(self) -> Settings:
        return run(_caller.settings(self))

    @property
    def checkout_timeout(self) -> float | None:
        """The pool's default bound on the wait for a free worker (None: no limit)."""
        return self._settings().checkout_timeout

    # ---- commands ---------------------------------------------------------------------

    def execute(self, command: str, *args: Any, session: Any = None, timeout: Any = UNSET,
                checkout_timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``command`` on a worker: the session's own worker if
        ``session`` is given, else any free one (waiting up to
        ``checkout_timeout``, default the pool's). ``timeout`` bounds the
        command's run (default: the pool's ``command_timeout``). ``session``,
        ``timeout`` and ``checkout_timeout`` are the pool's: a command cannot
        take keyword arguments of those names. If the worker dies before the
        command started, it runs on another (the session's new one, after its
        replay) within what is left of its deadline; only a command that was
        running when its worker died gets WorkerCrashed."""
        _caller.check_input(command, session)
        return run(_caller.execute(self, command, args, kwargs, session, timeout,
                                   checkout_timeout))

    async def aexecute(self, command: str, *args: Any, session: Any = None,
                       timeout: Any = UNSET, checkout_timeout: float | None = None,
                       **kwargs: Any) -> Any:
        """``execute`` for asyncio: the task waits, not the thread (any number
        of commands in flight from one event loop). Cancelled while it waits
        for a worker, the task gives up its place in the queue; cancelled while
        its command runs, the command finishes on its worker and its result is
        dropped."""
        _caller.check_input(command, session)
        return await arun(_caller.execute(self, command, args, kwargs, session, timeout,
                                          checkout_timeout))

    def execute_many(self, command: str, calls: Any, *, session: Any = None,
                     timeout: Any = UNSET, window: int = _WINDOW,
                     return_exceptions: bool = False) -> list:
        """Run ``command`` once per entry of ``calls`` (each a tuple of
        positional arguments), pipelined: up to ``window`` commands are
        outstanding at once on one worker, so a burst costs no round trip
        per command. With ``session``, on the session's worker, in order
        (as that many ``execute`` calls); without, on one checked-out
        worker. ``timeout`` bounds each command's run, as in ``execute``.

        Returns the results in order. A command's exception is raised once
        every command has answered (the first one's, by position), or put
        in its place with ``return_exceptions=True``. If the worker dies,
        the command it was running gets WorkerCrashed and the ones queued
        behind it (which never ran) run on the session's new worker.
        """
        calls = _check_batch(command, calls, session, window)
        return _results(run(self._many(command, calls, session, timeout, window)),
                        return_exceptions)

    async def aexecute_many(self, command: str, calls: Any, *, session: Any = None,
                            timeout: Any = UNSET, window: int = _WINDOW,
                            return_exceptions: bool = False) -> list:
        """``execute_many`` for asyncio."""
        calls = _check_batch(command, calls, session, window)
        return _results(await arun(self._many(command, calls, session, timeout, window)),
                        return_exceptions)

    async def _many(self, command: str, calls: list, session: Any, timeout: Any,
                    window: int) -> list:
        timeout = await _caller.run_timeout(self, timeout)
        return await run_batch(self, command, calls, session, timeout, window)

    @contextlib.contextmanager
    def checkout(self, timeout: float | None = None) -> Iterator["CheckedOut"]:
        """Hold one worker exclusively for the with-body (waiting up to
        ``timeout``, default the pool's ``checkout_timeout``). An exception
        in the body replaces the worker; a normal exit returns it.
        ``math.inf``: wait as long as it takes."""
        wait = run(_caller.wait_for_worker(self, timeout))
        token = otpy.make_ref()
        with self._holding(run(_caller.checkout(self, token, wait)), token, wait) as held:
            yield held

    @contextlib.asynccontextmanager
    async def acheckout(self, timeout: float | None = None) -> AsyncIterator["CheckedOut"]:
        """``checkout`` for asyncio: ``async with pool.acheckout() as w:
        await w.aexecute(...)``."""
        wait = await arun(_caller.wait_for_worker(self, timeout))
        token = otpy.make_ref()
        with self._holding(await arun(_caller.checkout(self, token, wait)), token, wait) as held:
            yield held

    @contextlib.contextmanager
    def _holding(self, worker: otpy.Pid, token: Any, wait: float | None
                 ) -> Iterator["CheckedOut"]:
        """A checked-out worker for the block: returned after it, replaced
        after an exception in it."""
        error = None
        try:
            yield CheckedOut(self, worker, token, wait)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._cast((CHECKIN, token, _caller.checkin_how(error, replace_on_error=True)))

    @contextlib.contextmanager
    def session(self, session: Any) -> Iterator["BoundSession"]:
        """A handle bound to ``session``; the session ends when the with-block does."""
        check_session(_session_id(session))
        try:
            yield BoundSession(self, session)
        finally:
            try:
                self.end_session(session)
            except PoolError:
                pass  # never bound (no command ran), or the pool is gone

    @contextlib.asynccontextmanager
    async def asession(self, session: Any) -> AsyncIterator["BoundSession"]:
        """``session`` for asyncio: ``async with pool.asession(sid) as s:
        await s.aexecute(...)``."""
        check_session(_session_id(session))
        try:
            yield BoundSession(self, session)
        finally:
            try:
                await arun(self._end_session(session))
            except PoolError:
                pass

    def end_session(self, session: Any) -> None:
        """Drop the session and its state in its worker; SessionNotFound if unknown."""
        run(self._end_session(session))

    async def _end_session(self, session: Any) -> None:
        with _caller.lock:
            _caller.bindings.get(self._key(), {}).pop(session, None)
        await _caller.ask(self, END_SESSION, session)

    # ---- looking -------------------------------------------------------------------

    def status(self) -> PoolStatus:
        return self._ask(STATUS)

    def workers(self) -> list[otpy.Pid]:
        """The worker pids, in start order."""
        return self._ask(WORKERS)

    def worker_of(self, session: Any) -> otpy.Pid | None:
        """The session's worker, or None (unknown, or to be re-bound at its next command)."""
        return self._ask(WORKER_OF, session)

    def subscribe(self) -> None:
        """The calling process receives PoolEvent messages until unsubscribe()."""
        self._ask(SUBSCRIBE, otpy.self())

    def unsubscribe(self) -> None:
        self._ask(UNSUBSCRIBE, otpy.self())

    def executor(self, max_workers: int | None = None) -> Any:
        """A concurrent.futures.Executor running plain functions on the
        workers, ``max_workers`` at once (default: size plus overflow), work
        waiting for a worker without limit; its ``shutdown`` leaves the pool
        running. For an executor with a pool of its own: ProcessPoolExecutor."""
        from ._pool_executor import PoolExecutor

        return PoolExecutor(self, max_workers)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the pool's subtree (its workers first). Under a supervisor of
        your own, use that supervisor's terminate_child instead: a permanent
        child would be restarted. ``timeout`` bounds the whole stop (None or
        ``math.inf``: no limit)."""
        lowlevel.check_timeout(timeout, "stop timeout")
        with _caller.lock:
            _caller.settings_cache.pop(self._key(), None)
        supervisor = self._settings().supervisor  # asked again: the server may be new
        with _caller.lock:
            _caller.bindings.pop(self._key(), None)
            _caller.settings_cache.pop(self._key(), None)
        _claims.forget(self._key())
        otpy.unlink(supervisor)
        otpy.Supervisor.stop(supervisor, "shutdown", timeout=timeout)


def _check_batch(command: Any, calls: Any, session: Any, window: Any) -> list:
    """execute_many's input, every entry checked before any is sent."""
    _caller.check_input(command, session)
    calls = list(calls)
    check_batch(calls, window)
    return calls


def _results(outcomes: list, return_exceptions: bool) -> list:
    """Each entry's value in order; the first error raised unless ``return_exceptions``."""
    results = []
    for outcome in outcomes:
        if outcome[0] != OK and not return_exceptions:
            raise outcome[1]
        results.append(outcome[1])
    return results


def _session_id(session: Any) -> Any:
    if session is None:
        raise ValueError("a session id cannot be None")
    return session


class CheckedOut:
    """A worker held by ``checkout()``: run session-less commands on it (from
    several threads if you like; from one task with ``acheckout()``)."""

    def __init__(self, pool: Pool, worker: otpy.Pid, token: Any, wait: float | None) -> None:
        self.pool = pool
        self.pid = worker
        self._token = token
        self._wait = wait
        self._lock = threading.Lock()

    def execute(self, command: str, *args: Any, timeout: Any = UNSET, **kwargs: Any) -> Any:
        """Run ``command`` on the held worker; ``timeout`` as in ``Pool.execute``
        (default: the pool's ``command_timeout``). If the held worker dies
        before the command started, the checkout moves to a new worker (the
        old one's state died with it) and the command runs there."""
        check_command(command)
        timeout = run(_caller.run_timeout(self.pool, timeout))
        for _ in range(RETRIES):
            worker = self.pid
            try:
                return run(self._run(worker, command, args, kwargs, timeout))
            except NotRun:
                with self._lock:  # once, whichever thread of the holder sees it first
                    if self.pid == worker:
                        self.pid = run(_caller.checkout(self.pool, self._token, self._wait))
        raise PoolError(f"pool {self.pool.name!r}: no live worker to run {command!r} on")

    async def aexecute(self, command: str, *args: Any, timeout: Any = UNSET,
                       **kwargs: Any) -> Any:
        """``execute`` for asyncio (one task at a time per checkout)."""
        check_command(command)
        timeout = await arun(_caller.run_timeout(self.pool, timeout))
        for _ in range(RETRIES):
            worker = self.pid
            try:
                return await arun(self._run(worker, command, args, kwargs, timeout))
            except NotRun:
                if self.pid == worker:
                    self.pid = await arun(_caller.checkout(self.pool, self._token, self._wait))
        raise PoolError(f"pool {self.pool.name!r}: no live worker to run {command!r} on")

    def _run(self, worker: otpy.Pid, command: str, args: tuple, kwargs: dict,
             timeout: float | None) -> Any:
        return _caller.run_on(self.pool, worker, self._token, command, args, kwargs, timeout)

    def call_function(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.execute(FUNCTION, fn, args, kwargs)


class BoundSession:
    """``pool.session(id)``: execute() with the session given."""

    def __init__(self, pool: Pool, session: Any) -> None:
        self.pool = pool
        self.id = session

    def execute(self, command: str, *args: Any, timeout: Any = UNSET, **kwargs: Any) -> Any:
        return self.pool.execute(command, *args, session=self.id, timeout=timeout, **kwargs)

    async def aexecute(self, command: str, *args: Any, timeout: Any = UNSET,
                       **kwargs: Any) -> Any:
        return await self.pool.aexecute(command, *args, session=self.id, timeout=timeout,
                                        **kwargs)
