"""Waiting in asyncio: calls and receives that suspend a task instead of
blocking a thread.

An event loop never blocks on a process's inbound stream. While tasks of a
loop wait here, the loop watches the stream (``add_reader``) and, when it is
readable and no thread of the process is reading it, reads what has arrived
without blocking and files it (ProcessContext.read_available). Whoever files
a reply or a message (the loop, or a thread blocked in a call) wakes the
tasks it concerns: at once in the loop's own thread, through
``call_soon_threadsafe`` from another. So any number of waiting tasks cost no
thread, sync and async callers share one process, and a task can wait from
any thread's loop.

Before it suspends, a task whose loop has nothing else ready polls the stream
for a short while (SPIN_NS): as a blocked reader's spin does, this catches a
fast server's reply before the loop goes to sleep in epoll, whose wake-up
costs more than the round trip. It never delays other ready work.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Callable

from . import wire
from .errors import RuntimeGone, Timeout
from .process import (_DEFAULT, SEND_TIMEOUT, PendingReply, ProcessContext, _send_timeout,
                      unread_bytes)
from .terms import Pid, Ref

_monotonic = time.monotonic
_perf_ns = time.perf_counter_ns
SPIN_NS = 50_000


class _Task:
    """One waiting task's wake-up: a future of its loop, set from any thread."""

    __slots__ = ("loop", "thread", "future", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.future: asyncio.Future = loop.create_future()
        self.expired = False

    def wake(self) -> None:
        """Called with the process's lock held, from any thread."""
        if threading.get_ident() == self.thread:
            _resolve(self.future)
        else:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def expire(self) -> None:
        """The wait's deadline (a timer of the loop): ends the current round."""
        self.expired = True
        _resolve(self.future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _LoopReader:
    """A loop's watch on the process's inbound stream, while tasks of that
    loop wait (so an idle loop does not wake for a stream others read)."""

    def __init__(self, ctx: ProcessContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self.waiting = 0

    def enter(self) -> bool:
        """One more task waits; True if the loop starts watching the stream now."""
        if self.waiting:
            self.waiting += 1
            return False
        self.loop.add_reader(self.ctx.inbound.fileno(), self.ctx.read_available)
        self.waiting = 1
        return True

    def leave(self) -> None:
        self.waiting -= 1
        if not self.waiting and not self.loop.is_closed():
            self.loop.remove_reader(self.ctx.inbound.fileno())


_readers: dict[tuple[int, int], _LoopReader] = {}  # (id(ctx), id(loop)) -> its reader
_readers_lock = threading.Lock()


def _reader(ctx: ProcessContext, loop: asyncio.AbstractEventLoop) -> _LoopReader:
    key = (id(ctx), id(loop))
    reader = _readers.get(key)
    if reader is None or reader.ctx is not ctx or reader.loop is not loop:
        with _readers_lock:
            for old in [k for k, r in _readers.items() if r.loop.is_closed()]:
                del _readers[old]
            reader = _readers[key] = _LoopReader(ctx, loop)
    return reader


async def wait_for(ctx: ProcessContext, check: Callable[[], Any], deadline: float | None,
                   key: Any = None) -> Any:
    """As ProcessContext.wait_for, suspending the task instead of blocking:
    the first non-None ``check()`` (called with the lock held), None once
    ``deadline`` passes. ``key`` says what can end the wait (a call's ref,
    or None: any message)."""
    loop = asyncio.get_running_loop()
    if _idle(loop):  # a lone waiter: poll briefly before the loop sleeps (see SPIN_NS)
        found = _check(ctx, check)
        if found is None:
            found = _spin(ctx, check, deadline)
        if found is not None:
            return found
    lock = ctx.lock
    task = None
    timer = None
    lock.acquire()
    try:
        found = _check_locked(ctx, check)
        if found is not None:
            return found
        # A loop that was not watching the stream yet reads what came before
        # it did, once, below; one already watching hears of anything new from
        # its reader's callback (each waiter reading again measured slower
        # with many waiting: many small reads instead of a few big ones).
        # (add_reader never calls back at once: fine with the lock held.)
        reader = _reader(ctx, loop)
        unread = reader.enter()
        try:
            # Each round registers the task and, once woken, unregisters it
            # and checks, in one hold of the lock (what is filed meanwhile
            # wakes it). A wake-up that does not end the wait (a message a
            # receive does not match) goes round again.
            while True:
                if deadline is not None and _monotonic() >= deadline:
                    return None
                if task is None:
                    task = _Task(loop)
                else:
                    task.future = loop.create_future()
                if key is None:
                    ctx.tasks[task] = None
                else:
                    ctx.keyed_tasks[key] = task
                try:
                    lock.release()
                    if unread:
                        unread = False
                        ctx.read_available()
                    # (again if the timer fired before the deadline: a loop's clock
                    # may be coarser than ours, as uvloop's milliseconds are)
                    if deadline is not None and (timer is None or task.expired):
                        task.expired = False
                        timer = loop.call_later(max(0.0, deadline - _monotonic()), task.expire)
                    await task.future
                finally:
                    lock.acquire()
                    if key is None:
                        del ctx.tasks[task]
                    elif ctx.keyed_tasks.get(key) is task:
                        del ctx.keyed_tasks[key]
                found = _check_locked(ctx, check)
                if found is not None:
                    return found
        finally:
            reader.leave()
    finally:
        lock.release()
        if timer is not None:
            timer.cancel()


def _check(ctx: ProcessContext, check: Callable[[], Any]) -> Any:
    with ctx.lock:
        return _check_locked(ctx, check)


def _check_locked(ctx: ProcessContext, check: Callable[[], Any]) -> Any:
    if ctx.fatal is not None:
        fatal, ctx.fatal = ctx.fatal, None
        raise fatal
    found = check()
    if found is None and ctx.gone:
        raise RuntimeGone("the otpy node is gone")
    return found


def _idle(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop has no other callback ready to run (asyncio's own
    loop only; any other loop is taken to be busy: no spin)."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _spin(ctx: ProcessContext, check: Callable[[], Any], deadline: float | None) -> Any:
    until = _perf_ns() + SPIN_NS
    if deadline is not None:
        until = min(until, _perf_ns() + int((deadline - _monotonic()) * 1e9))
    while _perf_ns() < until:
        os.sched_yield()  # the server we wait for may need this CPU (see process._spin)
        if ctx.read_available():
            found = _check(ctx, check)
            if found is not None:
                return found
    return None


# ---- sending without blocking the loop ---------------------------------------------------

async def send_encoded(ctx: ProcessContext, pid: Pid, kind: int, body: bytes,
                       deadline: Any = _DEFAULT) -> None:
    """As ProcessContext.send_encoded; while the receiver's buffer is full
    the task waits for room (the loop watches the stream's write end; for a
    big frame held back, the end our acknowledgements come on, and the
    stream for a hang-up: wire.BigFrames). It watches copies of those
    descriptors of its own: a loop keeps one callback per descriptor, and
    two tasks waiting on one stream would clobber each other."""
    if pid == ctx.pid:  # to our own mailbox: never full
        ctx.send_encoded(pid, kind, body)
        return
    if not _full(ctx, pid, kind, body):
        return
    if deadline is _DEFAULT:
        deadline = _monotonic() + SEND_TIMEOUT
    loop = asyncio.get_running_loop()
    sock = ctx.out.get(pid.serial)
    while sock is not None:
        big = ctx.big_frames(pid.serial, body)
        room = loop.create_future()
        acks = None if big is None or big.room(len(body)) else big.watched()
        if acks is None:
            watches = [(loop.add_writer, loop.remove_writer, os.dup(sock.fileno()))]
        else:  # an acknowledgement comes as the receiver reads; a hang-up if it dies
            watches = [(loop.add_reader, loop.remove_reader, acks),
                       (loop.add_reader, loop.remove_reader, os.dup(sock.fileno()))]
        for watch, _, fd in watches:
            watch(fd, _resolve, room)
        try:
            if deadline is None:
                await room
            else:
                await asyncio.wait_for(room, max(0.0, deadline - _monotonic()))
        except asyncio.TimeoutError:
            raise Timeout(f"send to {pid!r} gave up: its inbound buffer is full "
                          f"({unread_bytes(sock, big)} bytes unread); the receiver is not "
                          "reading its messages. Nothing was sent.") from None
        finally:
            for _, unwatch, fd in watches:
                unwatch(fd)
                os.close(fd)
        if not _full(ctx, pid, kind, body):
            return
        sock = ctx.out.get(pid.serial)


def _full(ctx: ProcessContext, pid: Pid, kind: int, body: bytes) -> bool:
    """Send now if there is room: False if sent (or dropped: the receiver is
    dead), True if the receiver's buffer is full."""
    try:
        ctx.send_encoded(pid, kind, body, 0.0)  # a deadline now: never waits
    except Timeout:
        return ctx.out.get(pid.serial) is not None
    return False


# ---- calls and receives ----------------------------------------------------------------

async def call(ctx: ProcessContext, pid: Pid, message: Any, ref: Ref,
               timeout: float | None) -> Any:
    """As ProcessContext.call, suspending the task: the reply, NoProc at once
    for a dead callee, Exited with its reason if it dies first, Timeout.
    A task cancelled while waiting gives up the call: a late reply is dropped."""
    kind, body, deadline, check = ctx.start_call(pid, message, ref, timeout)
    try:
        # (start_call refuses a call to ourselves.) A frame that fits is sent
        # here; only a full receiver costs send_encoded's coroutine.
        if _full(ctx, pid, kind, body):
            try:
                await send_encoded(ctx, pid, kind, body, deadline)
            except Timeout:
                raise _send_timeout(pid, timeout) from None
        found = await wait_for(ctx, check, deadline, ref)
    except BaseException:  # CancelledError included: a late reply is dropped
        ctx._abandon(ref)
        raise
    return ctx.finish_call(found, pid, ref, timeout)


async def reply(pending: PendingReply) -> Any:
    """``PendingReply.wait`` for asyncio (no limit but the request's own)."""
    ctx = pending.ctx
    try:
        found = await wait_for(ctx, pending.check, pending.deadline, pending.ref)
    except BaseException:  # CancelledError included: a late reply is dropped
        ctx._abandon(pending.ref)
        raise
    return ctx.finish_call(found, pending.pid, pending.ref, pending.timeout)


async def receive(ctx: ProcessContext, timeout: float | None,
                  match: Callable[[Any], bool] | None) -> Any:
    """As ProcessContext.receive, suspending the task."""
    deadline = None if timeout is None else _monotonic() + timeout
    found = await wait_for(ctx, ctx.taker(match), deadline)
    if found is None:
        raise Timeout(f"receive timed out after {timeout}s")
    return found[0]
