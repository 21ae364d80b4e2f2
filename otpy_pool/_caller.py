"""The caller's side of a pool, as coroutines that ``_io.run`` drives in a
thread and ``_io.arun`` in an asyncio task (``Pool.execute`` and
``Pool.aexecute`` run the same code).

What a caller does: ask the server (waiting briefly for a replaced one),
bind a session, run a command on its worker, and, when that worker dies
with the command unanswered, find out whether it ever started: a command
that never ran runs again on the session's new worker (or another free
one) within what is left of its deadline; only the one that was running
gets WorkerCrashed. A session-less command claims a free worker (see
_claims), else the server hands it to one (``run_any``); an async pool's
checks a worker out. Per OS process, a handle caches each session's
worker, the pool's settings and its claims page, so a bound session's
command is one round trip, and so is a session-less one that claims.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

import otpy
from otpy import lowlevel

from . import _claims
from ._calls import NotRun, check_command, check_session, result, run_call
from ._errors import (CommandTimeout, PoolError, PoolNotRunning, PoolTimeout, SessionLost,
                      WorkerCrashed, duration)
from ._io import Call, Request, Sleep
from ._pool_options import Settings, seconds
from ._protocol import (AFTER_RUNNING, BIND, CANCEL, CHECKIN, CHECKOUT, CLAIMS, DEAD, DEADLINE,
                        ERROR, LOST, MOVED, NOT_RUN, RAN, REPLACE, RETIRED, RETURN, RUN_ANY,
                        SETTINGS, UNBOUND, UNKNOWN)

if TYPE_CHECKING:
    from ._pool import Pool

UNSET: Any = object()  # "the pool's default" (None means no limit)
RETRIES = 8  # workers one command (or batch) may move to: deaths, moved sessions
MARGIN = 5.0  # a checkout's own timer fires first; this only guards against a stuck server
SERVER_WAIT = 1.0  # how long a caller waits for a replaced server's successor
# An async worker answers a command it cancelled at its deadline once the
# command ended, within its grace; the caller waits that long, and this, more.
REPLY_MARGIN = 0.1

# Per pool, for this OS process: session -> worker (stale entries are
# harmless: a worker answers UNBOUND for a session it does not hold, and the
# caller asks again), and the pool's settings.
bindings: dict[tuple[str, str], dict[Any, otpy.Pid]] = {}
settings_cache: dict[tuple[str, str], Settings] = {}
lock = threading.Lock()


# ---- the server -----------------------------------------------------------------------------

async def ask(pool: "Pool", *request: Any, timeout: float | None = None) -> Any:
    """One operation on the server; its error raised here. A server that is
    being replaced (its supervisor restarts it) is waited for, briefly."""
    for attempt in (1, 2, 3):
        server = await await_server(pool)
        try:
            outcome, value = await Call(server, request, timeout)
        except otpy.Exited as exc:  # NoProc included
            if attempt == 3:
                raise PoolError(f"pool {pool.name!r}: its server exited: "
                                f"{lowlevel.describe_reason(exc.reason)}") from None
            continue
        if outcome == ERROR:
            raise value
        return value
    raise AssertionError("unreachable")


async def await_server(pool: "Pool") -> otpy.Pid:
    """The server's pid. Between a server's death and its replacement's
    start the name is unregistered: polled for up to SERVER_WAIT."""
    deadline = time.monotonic() + SERVER_WAIT
    delay = 0.002
    while True:
        try:
            return pool._server()
        except otpy.NoProc:
            if time.monotonic() + delay > deadline:
                raise PoolNotRunning(f"pool {pool.name!r} is not running") from None
            await Sleep(delay)
            delay = min(delay * 2, 0.1)


async def settings(pool: "Pool") -> Settings:
    """The pool's defaults, asked once per process and pool."""
    key = pool._key()
    found = settings_cache.get(key)
    if found is None:
        found = settings_cache[key] = await ask(pool, SETTINGS)
    return found


# A command's hot path reads the settings through these: when cached (all
# but a process's first command), no coroutine is made to await them.

async def run_timeout(pool: "Pool", timeout: Any) -> float | None:
    """A command's bound on its run: the pool's ``command_timeout`` unless
    given; None (or ``math.inf``) is no bound, returned as None."""
    if timeout is UNSET:
        return (settings_cache.get(pool._key()) or await settings(pool)).command_timeout
    return seconds(timeout, "timeout")


async def wait_for_worker(pool: "Pool", checkout_timeout: Any) -> float | None:
    """A wait for a free worker: the pool's ``checkout_timeout`` for None,
    else the value checked (``math.inf``: no limit, returned as None)."""
    if checkout_timeout is None:
        return (settings_cache.get(pool._key()) or await settings(pool)).checkout_timeout
    return seconds(checkout_timeout, "checkout_timeout")


# ---- sessions ------------------------------------------------------------------------------

def session_cache(pool: "Pool") -> dict[Any, otpy.Pid]:
    """This OS process's session -> worker cache for the pool."""
    key = pool._key()
    cache = bindings.get(key)
    if cache is None:
        with lock:
            cache = bindings.setdefault(key, {})
    return cache


async def bound(pool: "Pool", cache: dict, sid: Any, stale: otpy.Pid | None) -> otpy.Pid:
    """The session's worker: cached, else bound by the server (``stale``:
    a worker that turned out not to hold it)."""
    worker = cache.get(sid)
    if worker is None:
        worker = cache[sid] = await ask(pool, BIND, sid, stale)
    return worker


def forget(cache: dict, sid: Any, worker: otpy.Pid) -> otpy.Pid:
    if cache.get(sid) == worker:
        cache.pop(sid, None)
    return worker


async def run_in_session(pool: "Pool", sid: Any, command: str, args: tuple, kwargs: dict,
                         timeout: float | None) -> Any:
    """The command on the session's worker. If that worker dies before the
    command started (it was queued behind the one running, or on its way
    to a worker already dead), it runs on the session's new worker, after
    the replay, within what is left of its own deadline."""
    cache = session_cache(pool)
    stale = None
    end = None if timeout is None else time.monotonic() + timeout
    for _ in range(RETRIES):
        worker = cache.get(sid) or await bound(pool, cache, sid, stale)  # (a hit: no coroutine)
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:  # a retry with no time left: nothing ran
            raise CommandTimeout(f"command {command!r} of session {sid!r} did not start "
                                 f"within {duration(timeout)}: its worker died first")
        try:
            outcome = await session_run(pool, worker, sid, command, args, kwargs, left, timeout)
        except NotRun:
            stale = forget(cache, sid, worker)
            continue
        if outcome[0] in (UNBOUND, MOVED):  # not (or no longer) its worker
            forget(cache, sid, worker)
            stale = worker if outcome[0] == MOVED else None
            continue
        if outcome[0] == LOST:
            raise SessionLost(sid, outcome[1]) from None
        return result(outcome)
    raise PoolError(f"pool {pool.name!r}: session {sid!r} could not be bound to a worker")


async def session_run(pool: "Pool", worker: otpy.Pid, sid: Any, command: str, args: tuple,
                      kwargs: dict, left: float | None, timeout: float | None) -> tuple:
    """One RUN of a session's command on ``worker``: its outcome; NotRun if
    the worker died before it started (dead before it got it included:
    NoProc, whose reason is "noproc")."""
    ref = otpy.make_ref()
    message, wait = await run_message(pool, ref, sid, command, args, kwargs, left)
    try:
        return await Request(worker, message, ref, wait)
    except otpy.Exited as exc:
        if await never_started(pool, worker, ref, exc.reason):
            raise NotRun() from None
        forget(session_cache(pool), sid, worker)
        raise WorkerCrashed(exc.reason) from None
    except otpy.Timeout:
        forget(session_cache(pool), sid, worker)
        await deadline(pool, worker, None)
        raise CommandTimeout(f"command {command!r} of session {sid!r} ran past "
                             f"{duration(timeout)}; its worker was replaced") from None


async def run_message(pool: "Pool", ref: otpy.Ref, sid: Any, command: str, args: tuple,
                      kwargs: dict, left: float | None) -> tuple[tuple, float | None]:
    """The RUN for a command with ``left`` s to run, and how long to wait
    for its answer. An async worker gets the deadline: it cancels the
    command then and answers CommandTimeout if it ends within the worker's
    grace, which the caller waits for too, before it has the worker killed."""
    grace = (settings_cache.get(pool._key()) or await settings(pool)).cancel_grace
    if grace is None or left is None:
        return run_call(ref, sid, command, args, kwargs), left
    deadline = time.monotonic() + left
    return run_call(ref, sid, command, args, kwargs, deadline), left + grace + REPLY_MARGIN


# ---- a worker's death, a deadline -----------------------------------------------------------

async def never_started(pool: "Pool", worker: otpy.Pid, ref: otpy.Ref, reason: Any) -> bool:
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
        running = await ask(pool, RAN, worker)
    except PoolError:  # no server: nobody can tell
        return False
    return running != UNKNOWN and (ref.origin[1], ref.n) not in running


async def deadline(pool: "Pool", worker: otpy.Pid, token: Any) -> None:
    """Have the server kill (and count, and replace) a worker past its deadline."""
    try:
        await ask(pool, DEADLINE, worker, token)
    except PoolError:  # no server now: kill it ourselves (planned: no crash report)
        lowlevel.kill(worker, ("shutdown", "command_timeout"))


def check_input(command: Any, session: Any) -> None:
    """A command's name and session id, checked before anything is sent."""
    check_command(command)
    if session is not None:
        check_session(session)


# ---- session-less commands: a worker checked out for the run --------------------------------

async def execute(pool: "Pool", command: str, args: tuple, kwargs: dict, session: Any,
                  timeout: Any, checkout_timeout: Any) -> Any:
    """``Pool.execute``'s and ``aexecute``'s work, its input checked by them."""
    found = settings_cache.get(pool._key())
    if found is not None and timeout is UNSET and checkout_timeout is None:
        # the common case, the pool's defaults (cached): no coroutines to await them
        timeout, wait = found.command_timeout, found.checkout_timeout
    else:
        timeout = await run_timeout(pool, timeout)
        wait = await wait_for_worker(pool, checkout_timeout)
    if session is not None:
        return await run_in_session(pool, session, command, args, kwargs, timeout)
    if (settings_cache.get(pool._key()) or await settings(pool)).cancel_grace is not None:
        # async workers: several commands at once
        return await run_checked_out(pool, command, args, kwargs, timeout, wait)
    for _ in range(RETRIES):
        outcome = await run_claimed(pool, command, args, kwargs, timeout)
        if outcome is None:  # no worker free for a claim: the server finds one, or queues it
            outcome = await run_anywhere(pool, command, args, kwargs, timeout, wait)
        if outcome[0] != NOT_RUN:
            return result(outcome)
        # its worker died before it started it: it runs on another one
    raise PoolError(f"pool {pool.name!r}: no live worker to run {command!r} on")


def release_after_running(claims: _claims.Claims, claim: _claims.Claim) -> None:
    """End ``claim`` once its worker has ended the command its caller gave
    up on (or died), from a thread of its own: until then nobody else's
    command can reach the worker, whose timeout would run behind it."""
    def wait() -> None:
        try:
            lowlevel.ask(claim.worker, (AFTER_RUNNING,), timeout=None)
        except Exception:  # Exited: the worker is gone; its slot is the server's
            pass
        finally:
            claims.release(claim)

    threading.Thread(target=wait, name="otpy-pool-claim-end", daemon=True).start()


async def claims_on(pool: "Pool") -> _claims.Claims | None:
    """This process's claims on the pool's server (None: it has none)."""
    key = pool._key()
    claims = _claims.recent(key)
    if claims is _claims.UNKNOWN:
        server = await await_server(pool)
        claims = _claims.claims_of(key, server)
        if claims is _claims.UNKNOWN:
            claims = _claims.make(key, server, await ask(pool, CLAIMS))
    return claims


async def run_claimed(pool: "Pool", command: str, args: tuple, kwargs: dict,
                      timeout: float | None) -> tuple | None:
    """One round trip, the server not asked: the command on a free worker
    this process claims (see _claims), released once answered. None if no
    worker is free for a claim now (or callers are queued: they come
    first); (NOT_RUN,) if the worker died, or was retiring, before it
    started it. A death while it ran is WorkerCrashed; past ``timeout`` the
    server kills the worker (CommandTimeout), as for a session's command."""
    claims = await claims_on(pool)
    claim = None if claims is None else claims.take()
    if claim is None:
        return None
    worker, ref = claim.worker, otpy.make_ref()
    try:
        outcome = await Request(worker, run_call(ref, None, command, args, kwargs), ref,
                                timeout)
    except (otpy.NoProc, otpy.SerializationError) as exc:  # the worker runs nothing of ours
        claims.release(claim)
        if isinstance(exc, otpy.SerializationError):  # not sent, or its answer undecodable
            raise
        with contextlib.suppress(PoolError):  # the server takes its Down (and its slot) first
            await ask(pool, RAN, worker)
        return (NOT_RUN,)
    except otpy.Exited as exc:
        claims.release(claim)
        if await never_started(pool, worker, ref, exc.reason):
            return (NOT_RUN,)
        raise WorkerCrashed(exc.reason) from None
    except otpy.Timeout:
        try:  # killed before the claim ends: nobody else's command can reach it
            await deadline(pool, worker, None)
        finally:
            claims.release(claim)
        raise CommandTimeout(f"command {command!r} ran past {duration(timeout)}; "
                             "its worker was replaced") from None
    except BaseException:  # cancelled, interrupted: it runs on, its answer is dropped,
        release_after_running(claims, claim)  # and the worker is claimed until it ends
        raise
    claims.release(claim)
    return (NOT_RUN,) if outcome[0] == MOVED else outcome


async def run_checked_out(pool: "Pool", command: str, args: tuple, kwargs: dict,
                          timeout: float | None, wait: float | None) -> Any:
    """A session-less command on a worker checked out for it: an async
    worker's, whose deadline the worker keeps (a handed command's deadline
    is the server's, which would kill every command the worker runs)."""
    for _ in range(RETRIES):
        async with checked_out(pool, wait) as (worker, token):
            try:
                return await run_on(pool, worker, token, command, args, kwargs, timeout)
            except NotRun:
                continue  # it died before our command started: another one
    raise PoolError(f"pool {pool.name!r}: no live worker to run {command!r} on")


async def run_anywhere(pool: "Pool", command: str, args: tuple, kwargs: dict,
                       timeout: float | None, wait: float | None) -> tuple:
    """One round trip: the server hands the command to a free worker (or
    queues it, as a checkout), and that worker answers here. The server
    keeps the command's deadline and sees its worker's death, so this waits
    for the answer or the server's death only."""
    server = await await_server(pool)
    ref = otpy.make_ref()
    message = (lowlevel.CALL, (otpy.self(), ref), (RUN_ANY, wait, timeout, command, args, kwargs))
    try:
        outcome = await Request(server, message, ref, None)
    except otpy.NoProc:
        return (NOT_RUN,)  # the server was gone before it got it: nothing ran
    except otpy.Exited as exc:
        raise PoolError(f"pool {pool.name!r}: its server exited while {command!r} was queued "
                        f"or running (it may have run): "
                        f"{lowlevel.describe_reason(exc.reason)}") from None
    except BaseException:  # cancelled, interrupted: out of the queue, or its answer dropped
        pool._cast((CANCEL, ref))
        raise
    lowlevel.drop_late_reply(ref)  # a worker's death can make the server answer too
    return outcome


async def run_on(pool: "Pool", worker: otpy.Pid, token: Any, command: str, args: tuple,
                 kwargs: dict, timeout: float | None) -> Any:
    """A command on a checked-out worker; NotRun if the worker died before
    the command started (the caller runs it on another one)."""
    ref = otpy.make_ref()
    message, wait = await run_message(pool, ref, None, command, args, kwargs, timeout)
    try:
        outcome = await Request(worker, message, ref, wait)
    except otpy.NoProc:
        try:
            await ask(pool, RAN, worker)  # the server takes its Down first
        except PoolError:
            pass
        raise NotRun() from None
    except otpy.Exited as exc:
        if await never_started(pool, worker, ref, exc.reason):
            raise NotRun() from None
        raise WorkerCrashed(exc.reason) from None
    except otpy.Timeout:
        await deadline(pool, worker, token)
        raise CommandTimeout(f"command {command!r} ran past {duration(timeout)}; "
                             "its worker was replaced") from None
    return result(outcome)


async def checkout(pool: "Pool", token: Any, wait: float | None) -> otpy.Pid:
    """A free worker, held under ``token``, waiting up to ``wait`` (None: no
    limit). Given up (the caller's timeout, or its task cancelled), the
    place in the queue is given up too, and a worker given meanwhile returns."""
    try:
        return await ask(pool, CHECKOUT, token, wait,
                         timeout=None if wait is None else wait + MARGIN)
    except otpy.Timeout:
        pool._cast((CANCEL, token))
        raise PoolTimeout(f"no worker of pool {pool.name!r} within {duration(wait)}") from None
    except BaseException:
        pool._cast((CANCEL, token))
        raise


def checkin_how(error: BaseException | None, replace_on_error: bool) -> str:
    """How a checkout ends: RETURN, DEAD (its worker died: the server takes
    its Down rather than reuse it) or, after another error with
    ``replace_on_error``, REPLACE (its state is unknown)."""
    if error is None:
        return RETURN
    if isinstance(error, (WorkerCrashed, NotRun)):
        return DEAD
    return REPLACE if replace_on_error else RETURN


@contextlib.asynccontextmanager
async def checked_out(pool: "Pool", wait: float | None,
                      replace_on_error: bool = False) -> AsyncIterator[tuple[otpy.Pid, Any]]:
    """Hold a worker for the block, then return it (see checkin_how)."""
    token = otpy.make_ref()
    worker = await checkout(pool, token, wait)
    error = None
    try:
        yield worker, token
    except BaseException as exc:
        error = exc
        raise
    finally:
        pool._cast((CHECKIN, token, checkin_how(error, replace_on_error)))
