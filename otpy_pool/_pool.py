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
import time
from typing import Any, Iterator

import otpy
from otpy import lowlevel
from otpy.lowlevel import Restart

from ._calls import NotRun, check_batch, check_command, check_session, result, run_call
from ._errors import (CommandTimeout, PoolError, PoolNotRunning, PoolTimeout, SessionLost,
                      WorkerCrashed, duration)
from ._pipeline import MARGIN, RETRIES, run_batch
from ._pool_options import DEFAULTS, PoolStatus, Settings, make_options, seconds
from ._pool_server import PoolServer
from ._protocol import (BIND, CANCEL, CHECKIN, CHECKOUT, DEAD, DEADLINE, END_SESSION, ERROR,
                        FIRST_START, FUNCTION, LOST, MOVED, OK, RAN, REPLACE, RETIRED, RETURN,
                        SETTINGS, STATUS, SUBSCRIBE, UNBOUND, UNKNOWN, UNSUBSCRIBE, WORKER_OF,
                        WORKERS)
from ._worker import Worker

_UNSET: Any = object()
_SERVER_WAIT = 1.0  # how long a caller waits for a replaced server's successor
_WINDOW = 64  # execute_many: commands outstanding at once, by default

# session -> worker, per pool, for this OS process (stale entries are harmless:
# a worker answers "unbound" for a session it does not hold, and the caller asks again)
_bindings: dict[tuple[str, str], dict[Any, otpy.Pid]] = {}
_settings: dict[tuple[str, str], Settings] = {}
_lock = threading.Lock()


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
            PoolServer.child_spec(opts, workers, id="server", name=opts.name, shutdown=5.0,
                                  timeout=wait),
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
                   placement: Any = None) -> "Pool":
        """Start the pool's subtree linked to the caller; returns its handle
        once the first workers are up (StartError if they cannot start).
        Unnamed pools get a generated name (``handle.name``). The options are
        _pool_options.OPTIONS (this signature is held to it by a test);
        ``placement``: where workers run (None: local processes; a
        ``RayPlacement``: Ray actors, see docs/distributed.md)."""
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

    def _ask(self, *request: Any, timeout: float | None = None) -> Any:
        """One operation on the server; its error raised here. A server that
        is being replaced (its supervisor restarts it) is waited for, briefly."""
        for attempt in (1, 2, 3):
            server = self._await_server()
            try:
                outcome, value = otpy.call(server, request, timeout=timeout)
            except otpy.Exited as exc:  # NoProc included
                if attempt == 3:
                    raise PoolError(f"pool {self.name!r}: its server exited: "
                                    f"{lowlevel.describe_reason(exc.reason)}") from None
                continue
            if outcome == ERROR:
                raise value
            return value
        raise AssertionError("unreachable")

    def _await_server(self) -> otpy.Pid:
        """The server's pid. Between a server's death and its replacement's
        start the name is unregistered: polled for up to _SERVER_WAIT."""
        deadline = time.monotonic() + _SERVER_WAIT
        delay = 0.002
        while True:
            try:
                return self._server()
            except otpy.NoProc:
                if time.monotonic() + delay > deadline:
                    raise PoolNotRunning(f"pool {self.name!r} is not running") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _ask_quietly(self, *request: Any) -> None:
        """An operation whose answer is not needed (and a missing server no error)."""
        try:
            self._ask(*request)
        except PoolError:
            pass

    def _cast(self, request: tuple) -> None:
        try:
            otpy.cast(self._server(), request)
        except otpy.NoProc:
            pass

    def _key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def _settings(self) -> Settings:
        key = self._key()
        found = _settings.get(key)
        if found is None:
            found = _settings[key] = self._ask(SETTINGS)
        return found

    @property
    def checkout_timeout(self) -> float | None:
        """The pool's default bound on the wait for a free worker (None: no limit)."""
        return self._settings().checkout_timeout

    def _wait(self, checkout_timeout: Any) -> float | None:
        """A wait for a free worker: the pool's ``checkout_timeout`` for None,
        else the value checked (``math.inf``: no limit, returned as None)."""
        if checkout_timeout is None:
            return self._settings().checkout_timeout
        return seconds(checkout_timeout, "checkout_timeout")

    # ---- commands ---------------------------------------------------------------------

    def execute(self, command: str, *args: Any, session: Any = None, timeout: Any = _UNSET,
                checkout_timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``command`` on a worker: the session's own worker if
        ``session`` is given, else any free one (waiting up to
        ``checkout_timeout``, default the pool's). ``timeout`` bounds the
        command's run (default: the pool's ``command_timeout``). ``session``,
        ``timeout`` and ``checkout_timeout`` are the pool's: a command cannot
        take keyword arguments of those names."""
        check_command(command)
        timeout = self._run_timeout(timeout)
        wait = self._wait(checkout_timeout)
        if session is None:
            for _ in range(RETRIES):
                with self._checked_out(wait) as (worker, token):
                    try:
                        return self._run_on(worker, token, command, args, kwargs, timeout)
                    except NotRun:
                        continue  # it died before our command started: another one
            raise PoolError(f"pool {self.name!r}: no live worker to run {command!r} on")
        check_session(session)
        return self._run_in_session(session, command, args, kwargs, timeout)

    def _run_in_session(self, sid: Any, command: str, args: tuple, kwargs: dict,
                        timeout: float | None) -> Any:
        """The command on the session's worker. If that worker dies before the
        command started (it was queued behind the one running, or on its way
        to a worker already dead), it runs on the session's new worker, after
        the replay, within what is left of its own deadline."""
        cache = self._session_cache()
        stale = None
        end = None if timeout is None else time.monotonic() + timeout
        for _ in range(RETRIES):
            worker = self._bound(cache, sid, stale)
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:  # a retry with no time left: nothing ran
                raise CommandTimeout(f"command {command!r} of session {sid!r} did not start "
                                     f"within {duration(timeout)}: its worker died first")
            try:
                outcome = self._session_run(worker, sid, command, args, kwargs, left, timeout)
            except NotRun:
                stale = self._forget(cache, sid, worker)
                continue
            if outcome[0] in (UNBOUND, MOVED):  # not (or no longer) its worker
                self._forget(cache, sid, worker)
                stale = worker if outcome[0] == MOVED else None
                continue
            if outcome[0] == LOST:
                raise SessionLost(sid, outcome[1]) from None
            return result(outcome)
        raise PoolError(f"pool {self.name!r}: session {sid!r} could not be bound to a worker")

    def _session_run(self, worker: otpy.Pid, sid: Any, command: str, args: tuple, kwargs: dict,
                     left: float | None, timeout: float | None) -> tuple:
        """One RUN of a session's command on ``worker``: its outcome; NotRun
        if the worker died before it started (dead before it got it
        included: NoProc, whose reason is "noproc")."""
        ref = otpy.make_ref()
        try:
            return lowlevel.request(worker, run_call(ref, sid, command, args, kwargs), ref, left)
        except otpy.Exited as exc:
            if self._never_started(worker, ref, exc.reason):
                raise NotRun() from None
            self._forget(self._session_cache(), sid, worker)
            raise WorkerCrashed(exc.reason) from None
        except otpy.Timeout:
            self._forget(self._session_cache(), sid, worker)
            self._deadline(worker, None)
            raise CommandTimeout(f"command {command!r} of session {sid!r} ran past "
                                 f"{duration(timeout)}; its worker was replaced") from None

    def execute_many(self, command: str, calls: Any, *, session: Any = None,
                     timeout: Any = _UNSET, window: int = _WINDOW,
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
        check_command(command)
        calls = list(calls)
        timeout = self._run_timeout(timeout)
        if session is not None:
            check_session(session)
        check_batch(calls, window)  # every entry, before any is sent
        results = []
        for outcome in run_batch(self, command, calls, session, timeout, window):
            if outcome[0] != OK and not return_exceptions:
                raise outcome[1]
            results.append(outcome[1])
        return results

    def _never_started(self, worker: otpy.Pid, ref: otpy.Ref, reason: Any) -> bool:
        """The worker died with our command (sent with ``ref``) unanswered:
        True if it never started it (so it can run elsewhere), False if it was
        running it or nobody can tell (at most once: never run it twice).

        The worker's counts page names the command it was running (see
        _counters); the server reads it at its death. A worker that was dead
        before ("noproc"), retired, or stopped by its supervisor ("shutdown":
        that comes after the command running then) ran none of ours."""
        if reason in ("noproc", "shutdown") or reason == RETIRED:
            return True
        try:
            running = self._ask(RAN, worker)
        except PoolError:  # no server: nobody can tell
            return False
        return running != UNKNOWN and running != (ref.origin[1], ref.n)

    def _session_cache(self) -> dict[Any, otpy.Pid]:
        """This OS process's session -> worker cache for the pool (the module's _bindings)."""
        key = self._key()
        cache = _bindings.get(key)
        if cache is None:
            with _lock:
                cache = _bindings.setdefault(key, {})
        return cache

    def _bound(self, cache: dict, sid: Any, stale: otpy.Pid | None) -> otpy.Pid:
        """The session's worker: cached, else bound by the server (``stale``:
        a worker that turned out not to hold it)."""
        worker = cache.get(sid)
        if worker is None:
            worker = cache[sid] = self._ask(BIND, sid, stale)
        return worker

    @staticmethod
    def _forget(cache: dict, sid: Any, worker: otpy.Pid) -> otpy.Pid:
        if cache.get(sid) == worker:
            cache.pop(sid, None)
        return worker

    def _run_on(self, worker: otpy.Pid, token: Any, command: str, args: tuple, kwargs: dict,
                timeout: float | None) -> Any:
        """A command on a checked-out worker; NotRun if the worker died
        before the command started (the caller runs it on another one)."""
        ref = otpy.make_ref()
        try:
            outcome = lowlevel.request(worker, run_call(ref, None, command, args, kwargs), ref,
                                       timeout)
        except otpy.NoProc:
            self._ask_quietly(RAN, worker)  # the server takes its Down first
            raise NotRun() from None
        except otpy.Exited as exc:
            if self._never_started(worker, ref, exc.reason):
                raise NotRun() from None
            raise WorkerCrashed(exc.reason) from None
        except otpy.Timeout:
            self._deadline(worker, token)
            raise CommandTimeout(f"command {command!r} ran past {duration(timeout)}; "
                                 "its worker was replaced") from None
        return result(outcome)

    def _run_timeout(self, timeout: Any) -> float | None:
        """A command's bound on its run: the pool's ``command_timeout`` unless
        given; None (or ``math.inf``) is no bound, returned as None."""
        if timeout is _UNSET:
            return self._settings().command_timeout
        return seconds(timeout, "timeout")

    def _deadline(self, worker: otpy.Pid, token: Any) -> None:
        """Have the server kill (and count, and replace) a worker past its deadline."""
        try:
            self._ask(DEADLINE, worker, token)
        except PoolError:  # no server now: kill it ourselves (planned: no crash report)
            lowlevel.kill(worker, ("shutdown", "command_timeout"))

    def _checkout(self, token: Any, wait: float | None) -> otpy.Pid:
        """A free worker, held under ``token``, waiting up to ``wait`` (None: no limit)."""
        try:
            return self._ask(CHECKOUT, token, wait,
                             timeout=None if wait is None else wait + MARGIN)
        except otpy.Timeout:
            self._cast((CANCEL, token))
            raise PoolTimeout(f"no worker of pool {self.name!r} within "
                              f"{duration(wait)}") from None

    @contextlib.contextmanager
    def _checked_out(self, wait: float | None,
                     replace_on_error: bool = False) -> Iterator[tuple[otpy.Pid, Any]]:
        """Hold a worker for the with-body, then return it; with
        ``replace_on_error``, an exception in the body replaces it instead.
        ``wait``: the longest wait for one (None: no limit)."""
        token = otpy.make_ref()
        worker = self._checkout(token, wait)
        how = RETURN
        try:
            yield worker, token
        except (WorkerCrashed, NotRun):
            how = DEAD  # the server waits for its Down rather than reuse it
            raise
        except BaseException:
            how = REPLACE if replace_on_error else RETURN
            raise
        finally:
            self._cast((CHECKIN, token, how))

    @contextlib.contextmanager
    def checkout(self, timeout: float | None = None) -> Iterator["CheckedOut"]:
        """Hold one worker exclusively for the with-body (waiting up to
        ``timeout``, default the pool's ``checkout_timeout``). An exception
        in the body replaces the worker; a normal exit returns it.
        ``math.inf``: wait as long as it takes."""
        wait = self._wait(timeout)
        with self._checked_out(wait, replace_on_error=True) as (worker, token):
            yield CheckedOut(self, worker, token, wait)

    @contextlib.contextmanager
    def session(self, session: Any) -> Iterator["BoundSession"]:
        """A handle bound to ``session``; the session ends when the with-block does."""
        if session is None:
            raise ValueError("a session id cannot be None")
        try:
            yield BoundSession(self, session)
        finally:
            try:
                self.end_session(session)
            except PoolError:
                pass  # never bound (no command ran), or the pool is gone

    def end_session(self, session: Any) -> None:
        """Drop the session and its state in its worker; SessionNotFound if unknown."""
        with _lock:
            _bindings.get(self._key(), {}).pop(session, None)
        self._ask(END_SESSION, session)

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
        """A concurrent.futures.Executor running plain functions on the workers."""
        from ._pool_executor import PoolExecutor

        return PoolExecutor(self, max_workers)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the pool's subtree (its workers first). Under a supervisor of
        your own, use that supervisor's terminate_child instead: a permanent
        child would be restarted. ``timeout`` bounds the whole stop (None or
        ``math.inf``: no limit)."""
        lowlevel.check_timeout(timeout, "stop timeout")
        with _lock:
            _settings.pop(self._key(), None)
        supervisor = self._settings().supervisor  # asked again: the server may be new
        with _lock:
            _bindings.pop(self._key(), None)
            _settings.pop(self._key(), None)
        otpy.unlink(supervisor)
        otpy.Supervisor.stop(supervisor, "shutdown", timeout=timeout)


class CheckedOut:
    """A worker held by ``checkout()``: run session-less commands on it."""

    def __init__(self, pool: Pool, worker: otpy.Pid, token: Any, wait: float | None) -> None:
        self.pool = pool
        self.pid = worker
        self._token = token
        self._wait = wait
        self._lock = threading.Lock()

    def execute(self, command: str, *args: Any, timeout: Any = _UNSET, **kwargs: Any) -> Any:
        """Run ``command`` on the held worker; ``timeout`` as in ``Pool.execute``
        (default: the pool's ``command_timeout``). If the held worker dies
        before the command started, the checkout moves to a new worker (the
        old one's state died with it) and the command runs there."""
        check_command(command)
        timeout = self.pool._run_timeout(timeout)
        for _ in range(RETRIES):
            worker = self.pid
            try:
                return self.pool._run_on(worker, self._token, command, args, kwargs, timeout)
            except NotRun:
                self._replace(worker)
        raise PoolError(f"pool {self.pool.name!r}: no live worker to run {command!r} on")

    def _replace(self, dead: otpy.Pid) -> None:
        """The held worker died: hold a new one under the same checkout (once,
        whichever thread of the holder sees it first)."""
        with self._lock:
            if self.pid == dead:
                self.pid = self.pool._checkout(self._token, self._wait)

    def call_function(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.execute(FUNCTION, fn, args, kwargs)


class BoundSession:
    """``pool.session(id)``: execute() with the session given."""

    def __init__(self, pool: Pool, session: Any) -> None:
        self.pool = pool
        self.id = session

    def execute(self, command: str, *args: Any, timeout: Any = _UNSET, **kwargs: Any) -> Any:
        return self.pool.execute(command, *args, session=self.id, timeout=timeout, **kwargs)
