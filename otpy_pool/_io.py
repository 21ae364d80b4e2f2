"""The caller's side written once, for threads and for asyncio.

A pool's caller logic (bind a session, run a command, retry where a worker
died before the command started, check a worker out and back in) is
written as coroutines that wait only on the operations below: a call, a
request, a receive, a send, a pause. ``run`` drives such a coroutine in
the calling thread, doing each operation the blocking way (``Pool.execute``);
``arun`` drives it in an asyncio task, doing each the asyncio way
(``Pool.aexecute``), so the task waits and the thread does not. One
implementation, two ways to wait: the sync and async forms cannot drift
apart in semantics, errors or counts.

An operation's error is raised at the ``await`` that asked for it. A task
cancelled while it waits has ``CancelledError`` raised there too, so the
coroutine's own cleanup (give up a place in the queue, return a worker)
runs as it does for any error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Coroutine

import otpy
from otpy import lowlevel


class _Operation:
    """``await op`` hands the operation to whichever driver runs the coroutine."""

    __slots__ = ()

    def __await__(self) -> Any:
        return (yield self)


class Call(_Operation):
    """``otpy.call(server, request, timeout)``: server is a Pid or a name."""

    __slots__ = ("server", "request", "timeout")

    def __init__(self, server: Any, request: Any, timeout: float | None) -> None:
        self.server, self.request, self.timeout = server, request, timeout


class Request(_Operation):
    """``lowlevel.request``: a call with a message and ref of our own."""

    __slots__ = ("pid", "message", "ref", "timeout")

    def __init__(self, pid: otpy.Pid, message: Any, ref: otpy.Ref,
                 timeout: float | None) -> None:
        self.pid, self.message, self.ref, self.timeout = pid, message, ref, timeout


class Receive(_Operation):
    """The first queued message ``match`` accepts (Timeout after ``timeout``)."""

    __slots__ = ("match", "timeout")

    def __init__(self, match: Callable[[Any], bool], timeout: float | None) -> None:
        self.match, self.timeout = match, timeout


class Send(_Operation):
    """``otpy.send``; waits for room in a full receiver at most ``timeout``."""

    __slots__ = ("pid", "message", "timeout")

    def __init__(self, pid: otpy.Pid, message: Any, timeout: float | None) -> None:
        self.pid, self.message, self.timeout = pid, message, timeout


class Ask(_Operation):
    """``lowlevel.ask``: a call whose server-side error is raised here."""

    __slots__ = ("server", "request", "timeout")

    def __init__(self, server: Any, request: tuple, timeout: float | None) -> None:
        self.server, self.request, self.timeout = server, request, timeout


class Sleep(_Operation):
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Blocking(_Operation):
    """A call into a library that only blocks (a Redis client): made in the
    thread that drives the coroutine; from asyncio, in the loop's default
    executor (a bounded pool of threads, never one per call)."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args


def _call(op: Call) -> Any:
    return otpy.call(op.server, op.request, timeout=op.timeout)


def _request(op: Request) -> Any:
    return lowlevel.request(op.pid, op.message, op.ref, op.timeout)


def _receive(op: Receive) -> Any:
    return otpy.receive(timeout=op.timeout, match=op.match)


def _send(op: Send) -> Any:
    return otpy.send(op.pid, op.message, timeout=op.timeout)


def _ask(op: Ask) -> Any:
    return lowlevel.ask(op.server, op.request, op.timeout)


def _blocking(op: Blocking) -> Any:
    return op.fn(*op.args)


def _sleep(op: Sleep) -> Any:
    time.sleep(op.seconds)  # a caller's own backoff (a server being replaced), never a test's


_BLOCKING: dict[type, Callable[[Any], Any]] = {
    Call: _call, Request: _request, Receive: _receive, Send: _send, Sleep: _sleep, Ask: _ask,
    Blocking: _blocking}


def run(coroutine: Coroutine[Any, Any, Any], value: Any = None, thrown: bool = False) -> Any:
    """Drive ``coroutine`` in this thread, each operation done blocking;
    ``value``: what its pending ``await`` gets (raised there if ``thrown``)."""
    return _drive(coroutine, value, thrown, None)[1]


# ---- a coroutine whose first request is sent by one thread and answered in another ----
# (the executor's submit sends a task to a claimed worker; its reply is
# taken by whichever comes first: result() in any thread, or the executor's loop)

def start(coroutine: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Drive ``coroutine`` in this thread until its first ``Request`` is sent:
    ``(True, PendingReply)`` with the coroutine left suspended where it awaits
    that reply (``resume`` or ``aresume`` it), or ``(False, its value)`` if it
    ended without one."""
    return _drive(coroutine, None, False, Request)


def _drive(coroutine: Coroutine[Any, Any, Any], value: Any, thrown: bool,
           park: type | None) -> tuple[bool, Any]:
    send: Callable[[Any], Any] = coroutine.throw if thrown else coroutine.send
    try:
        while True:
            operation = send(value)
            try:
                if type(operation) is park:
                    return True, lowlevel.send_request(operation.pid, operation.message,
                                                       operation.ref, operation.timeout)
                value = _BLOCKING[type(operation)](operation)
                send = coroutine.send
            except BaseException as exc:  # raised where the coroutine awaited it
                value = exc
                send = coroutine.throw
    except StopIteration as stop:
        return False, stop.value
    except BaseException:
        coroutine.close()
        raise


def resume(coroutine: Coroutine[Any, Any, Any], pending: lowlevel.PendingReply,
           limit: float | None = None) -> Any:
    """Take ``pending``'s reply in this thread and drive the coroutine that
    awaits it to its end: its value. With ``limit``: NOT_YET if no reply
    came within ``limit`` seconds. A KeyboardInterrupt while it waits is
    raised here with the coroutine still suspended (resume it again)."""
    try:
        reply = pending.wait(limit)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return run(coroutine, exc, True)
    if reply is lowlevel.NOT_YET:
        return reply
    return run(coroutine, reply)


async def aresume(coroutine: Coroutine[Any, Any, Any], pending: lowlevel.PendingReply) -> Any:
    """``resume`` in an asyncio task: the task waits for the reply."""
    try:
        reply = await lowlevel.areply(pending)
    except BaseException as exc:
        return await arun(coroutine, exc, True)
    return await arun(coroutine, reply)


# Each returns the awaitable that does the operation (no coroutine of its
# own around it: one fewer per operation, and a pool command is several).
# Its argument errors are raised in arun's try, as an await's would be.

def _acall(op: Call) -> Awaitable[Any]:
    return otpy.acall(op.server, op.request, timeout=op.timeout)


def _arequest(op: Request) -> Awaitable[Any]:
    return lowlevel.arequest(op.pid, op.message, op.ref, op.timeout)


def _areceive(op: Receive) -> Awaitable[Any]:
    return otpy.areceive(timeout=op.timeout, match=op.match)


def _asend(op: Send) -> Awaitable[Any]:
    return lowlevel.asend(op.pid, op.message, timeout=op.timeout)


def _asleep(op: Sleep) -> Awaitable[Any]:
    return asyncio.sleep(op.seconds)


def _aask(op: Ask) -> Awaitable[Any]:
    return lowlevel.aask(op.server, op.request, op.timeout)


def _ablocking(op: Blocking) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(None, op.fn, *op.args)


_ASYNC: dict[type, Callable[[Any], Awaitable[Any]]] = {
    Call: _acall, Request: _arequest, Receive: _areceive, Send: _asend, Sleep: _asleep,
    Ask: _aask, Blocking: _ablocking}


async def arun(coroutine: Coroutine[Any, Any, Any], value: Any = None,
               thrown: bool = False) -> Any:
    """Drive ``coroutine`` in the calling task, each operation awaited;
    ``value`` as in ``run``."""
    send: Callable[[Any], Any] = coroutine.throw if thrown else coroutine.send
    try:
        while True:
            operation = send(value)
            try:
                value = await _ASYNC[type(operation)](operation)
                send = coroutine.send
            except BaseException as exc:  # CancelledError included: the coroutine cleans up
                value = exc
                send = coroutine.throw
    except StopIteration as stop:
        return stop.value
    finally:
        coroutine.close()
