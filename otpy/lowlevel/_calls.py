"""The call convention every behaviour shares (OTP's ``gen`` module).

A call is a message ``(CALL, (caller_pid, ref), request)``; its answer is
``(REPLY, ref, value)``. The caller waits for that reply *or* the callee's
death, so a dead callee never turns into a timeout. ``ask``/``dispatch`` add
one convention on top: a server answers ``("ok", value)`` or ``("error",
exc)`` and the error is raised in the caller, so an operation that fails on
the server side fails where it was asked for.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._runtime import api
from .._runtime.errors import Timeout
from .._runtime.node import context
from .._runtime.process import NOT_YET, REPLY, PendingReply
from .._runtime.terms import Pid, Ref
from .._runtime.timeouts import check_timeout

CALL = "$call"
DEFAULT_TIMEOUT = 5.0


class From(NamedTuple):
    """Who is waiting for a call's reply; pass it to :func:`reply`."""

    pid: Pid
    ref: Ref


_aio_module: Any = None


def _aio() -> Any:
    """The runtime's asyncio side, imported at the first async call (otpy
    does not import asyncio with itself), then kept: an import statement in
    each call cost ~0.3 us, a tenth of acall's own work."""
    global _aio_module
    if _aio_module is None:
        from .._runtime import aio
        _aio_module = aio
    return _aio_module


def resolve(dest: Pid | str) -> Pid:
    """A pid for a pid or a registered name (in the caller's namespace); NoProc if unknown."""
    return context().resolve(dest)


def request(pid: Pid, message: Any, ref: Ref, timeout: float | None) -> Any:
    """Send ``message`` (which carries ``ref``) to ``pid`` and wait for ``(REPLY, ref, value)``.

    Returns ``value``. NoProc at once if ``pid`` is dead; Exited with its
    reason if it dies before replying; Timeout when ``timeout`` expires (a
    reply that comes later is dropped on arrival, never queued as a stray
    message). The building block of :func:`call`, for behaviours with a
    message format of their own. Each request needs a ref of its own:
    ValueError at once if another call of this process already awaits ``ref``.
    """
    return context().call(pid, message, ref, check_timeout(timeout, "request timeout"))


def send_request(pid: Pid, message: Any, ref: Ref, timeout: float | None) -> PendingReply:
    """The first half of :func:`request`: ``message`` sent, its reply left
    for ``PendingReply.wait`` (in any thread of this process; with a
    ``limit``, NOT_YET if it has not come yet) or :func:`areply` (in any
    event loop), taken once. NoProc at once if ``pid`` is dead."""
    return context().send_request(pid, message, ref, check_timeout(timeout, "request timeout"))


async def areply(pending: PendingReply) -> Any:
    """``pending.wait()`` for asyncio: the task waits, not the thread."""
    return await _aio().reply(pending)


def drop_late_reply(ref: Ref) -> None:
    """After a :func:`request` answered under ``ref``: one more answer under
    it (a second process answering for the first, which could not know) is
    dropped on arrival instead of left in the mailbox."""
    context().drop_late_reply(ref)


def call(server: Pid | str, request_term: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """Send ``request_term`` to a server and wait for its reply.

    NoProc at once for a dead or unknown server; Exited with the server's
    reason if it dies first; Timeout when ``timeout`` expires (a late reply is
    dropped). A server calling itself gets Exited at once instead of a hang.
    ``timeout=None`` (or ``math.inf``) waits until the reply or the server's death.
    """
    timeout = check_timeout(timeout, "call timeout")
    ctx = context()
    pid = ctx.resolve(server)
    ref = Ref.make(ctx.pid)
    return ctx.call(pid, (CALL, (ctx.pid, ref), request_term), ref, timeout)


async def acall(server: Pid | str, request_term: Any, timeout: float | None = None) -> Any:
    """As :func:`call`, for asyncio: the task waits, not the thread.

    Any number of tasks may wait at once (the event loop reads the process's
    inbound stream when they do: no thread per call), from any thread's
    loop, beside synchronous callers. ``timeout=None`` waits until the reply
    or the server's death (``asyncio.timeout`` works too). A task cancelled
    while it waits gives the call up: the server still handles the request,
    and its reply is dropped when it comes.
    """
    timeout = check_timeout(timeout, "acall timeout")
    ctx = context()
    pid = ctx.resolve(server)
    ref = Ref.make(ctx.pid)
    return await _aio().call(ctx, pid, (CALL, (ctx.pid, ref), request_term), ref, timeout)


async def arequest(pid: Pid, message: Any, ref: Ref, timeout: float | None) -> Any:
    """As :func:`request`, for asyncio."""
    return await _aio().call(context(), pid, message, ref,
                             check_timeout(timeout, "request timeout"))


def reply(caller: From, value: Any) -> None:
    """Answer a call: ``caller`` is the From the server received."""
    api.send(caller.pid, (REPLY, caller.ref, value))


def ask(server: Pid | str, request_term: tuple, timeout: float | None = None) -> Any:
    """Client side of an operation: call, and raise the error the server returned.

    The server answers with :func:`dispatch`. ``timeout=None`` waits until the
    answer or the server's death.
    """
    outcome, value = call(server, request_term, timeout=timeout)
    if outcome == "error":
        raise value
    return value


async def aask(server: Pid | str, request_term: tuple, timeout: float | None = None) -> Any:
    """As :func:`ask`, for asyncio: the task waits, not the thread."""
    outcome, value = await acall(server, request_term, timeout=timeout)
    if outcome == "error":
        raise value
    return value


def dispatch(server: Any, request_term: tuple) -> tuple[str, Any]:
    """Server side: run ``server._op_<name>(*args)`` for ``(name, *args)``.

    Returns ``("ok", value)`` or ``("error", exc)`` for :func:`ask`. An
    unknown operation is an error naming it, not a crash of the server.
    """
    op, *args = request_term
    method = getattr(server, "_op_" + op, None) if isinstance(op, str) else None
    if method is None:
        return ("error", ValueError(f"{type(server).__name__} has no operation {op!r}"))
    try:
        return ("ok", method(*args))
    except Exception as exc:
        return ("error", exc)


__all__ = ["CALL", "DEFAULT_TIMEOUT", "From", "NOT_YET", "PendingReply", "Timeout", "aask",
           "acall", "areply", "arequest", "ask", "drop_late_reply", "call", "send_request",
           "dispatch", "reply", "request", "resolve"]
