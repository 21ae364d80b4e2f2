"""One otpy process as seen from inside: its mailbox, its inbound stream, its
requests to the zygote, and (for spawned processes) its life cycle.

Receiving: one thread at a time reads the inbound stream (the "reader"). It
takes what is there with a non-blocking ``recvmsg``; if nothing is, it polls
for a while (see SPIN_NS), then blocks in a single ``recvmsg``, which is as
fast as the OS allows (waiting in epoll before the read doubled the round
trip when measured). Frames are decoded outside the lock
and then filed: messages go to the mailbox, replies from the zygote to
``replies``, notices become Exit/Down messages, and the reply to a call in
progress goes to ``awaiting`` under its ref (so a call never scans the
mailbox: its wait costs the same with 20,000 unrelated messages queued, as
OTP's receive marker makes it). Other threads of the same process sleep,
each on its own lock; the reader wakes only those whose wait what it filed
can end (a call's thread for its reply), as it goes back to its socket, and
hands the reader role to one of them when it leaves. Nothing runs in the
background: a process that does not call into otpy costs nothing, and a
process that must die while busy is killed by the zygote.

Sending: a frame is written without blocking; if the receiver's buffer is
full the sender polls for room until its deadline (a call's timeout, or
``SEND_TIMEOUT`` for a plain send), then raises Timeout: nothing was written,
frames are atomic. Once several threads use the process, a frame that fits
is written keeping the GIL (nowait.py), and so is every read that cannot block.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from . import reasons, wire
from .errors import (AlreadyRegistered, Exited, NamespaceError, NoProc, OtpyError, ProcessExit,
                     RuntimeGone, SerializationError, Timeout)
from .status import RUNNING, WAITING, StatusTable
from .terms import BadMessage, Down, Exit, Pid, Ref

_monotonic = time.monotonic
_thread_id = threading.get_ident
_perf_ns = time.perf_counter_ns
_TIMEVAL = struct.Struct("ll")
# Before blocking, a reader polls its socket for a while. Waking a process
# whose CPU has gone idle costs more than a round trip on these (virtual)
# machines; measured, a 50 us spin took a ping-pong from 2x a Pipe's round
# trip to a third of it. The spin adapts, between SPIN_NS and SPIN_MAX_NS: it
# doubles after a wait that blocked only briefly (HOT_NS: messages come fast,
# a longer spin would have caught the next one) and halves after one that
# blocked longer. A server fed by 16 threads otherwise sleeps between their
# bursts and wakes late for each (measured, 6 alternating runs: a median of
# 23k calls/s with a fixed 50 us spin, 27k adapting). The spin also yields
# the CPU before each poll, and is cut back to SPIN_NS when another process
# takes it (see _spin). The cost is bounded: at most SPIN_MAX_NS of CPU per
# wait, and a process whose messages come slowly spins SPIN_NS.
SPIN_NS = int(float(os.environ.get("OTPY_SPIN_US", "50")) * 1000)
SPIN_MAX_NS = 4 * SPIN_NS
HOT_NS = 250_000
YIELDED_NS = 20_000  # a sched_yield that took longer gave the CPU (or GIL) to another
REQUEST_TIMEOUT = 60.0
# How long a send waits for room in a full receiver before raising Timeout
# (node start reads OTPY_SEND_TIMEOUT).
SEND_TIMEOUT = 60.0
REPLY = "$reply"  # (REPLY, ref, value): the answer to a call
OUT_CACHE = 512  # inbound write ends kept open per process
_WAITING = object()  # awaiting[ref] before the reply is filed
DEFAULT_SEND_DEADLINE = _DEFAULT = object()  # "the default send deadline"

# Called (lock held) with (context, Exit) when the program's process queues
# an abnormal exit; node start sets it to the logger's (process.py does not
# import log: the hook keeps the two modules independent).
on_trapped_exit: Callable[[Any, Exit], None] | None = None


class ProcessContext:
    """Runtime state of the current OS process as an otpy process."""

    def __init__(self, pid: Pid, ns: str, parent: Pid | None, inbound: socket.socket,
                 ctrl: socket.socket, status: StatusTable, zygote_os_pid: int,
                 trap: bool, is_main: bool) -> None:
        self.pid = pid
        self.node = pid.node
        self.ns = ns
        self.parent = parent
        self.inbound = inbound
        self.ctrl = ctrl
        self.status = status
        self.zygote_os_pid = zygote_os_pid
        self.trap = trap
        self.is_main = is_main
        self.name: str | None = None  # its registered name, for log context
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)  # ``with ctx.cond`` holds the lock
        self.mailbox: deque[Any] = deque()
        self.replies: dict[int, Any] = {}
        self.awaiting: dict[Ref, Any] = {}  # calls in progress: ref -> reply or _WAITING
        # threads waiting while another reads -> what wakes them (a call's
        # ref, a request id, or None: anything filed)
        self.sleepers: dict[_Sleeper, Any] = {}
        self.keyed: dict[Any, _Sleeper] = {}  # the same, by key, where there is one
        # sleepers whose wait what was filed can end, woken as the reader goes
        # back to its socket (where it blocks, letting go of the GIL, if
        # nothing more came) or leaves: woken at once, each would only wait
        # for the GIL the reader still holds
        self.to_wake: list[_Sleeper] = []
        # asyncio tasks waiting here (aio.py), woken as soon as what they wait
        # for is filed, by whoever reads: those a key ends (a call's ref) by
        # key, the others (receives: anything filed) in ``tasks``. A keyed
        # task is in keyed_tasks only: a call's wait costs one dict entry.
        self.tasks: dict[Any, None] = {}
        self.keyed_tasks: dict[Any, Any] = {}
        self.reader = wire.FrameReader()
        self.reading = False
        self.reading_thread = 0  # the thread holding the reader role, while one does
        self.spin_ns = SPIN_NS  # adapts: see SPIN_NS
        # Set once a second thread waits here: from then on, socket calls that
        # cannot block keep the GIL (nowait.py). A single-threaded process
        # loses nothing by letting go of it, and Python's calls are cheaper.
        self.keep_gil = False
        self.rcvtimeo: float | None = None
        self.req_ids = itertools.count(1)
        self.ctrl_lock = threading.Lock()
        self.out: dict[int, socket.socket] = {}
        self.out_lock = threading.Lock()
        self.big_out: dict[int, wire.BigFrames] = {}  # per receiver (wire.BigFrames)
        self.names: dict[tuple[str, str], tuple[Pid | None, int]] = {}
        self.watched: set[int] = set()
        self.dead: dict[int, Any] = {}
        self.abandoned: dict[Ref, None] = {}  # calls that timed out: drop their replies
        self.abandoned_requests: set[int] = set()  # zygote requests that timed out: likewise
        self.gone = False
        self.fatal: ProcessExit | None = None
        self.local = threading.local()  # per-thread namespace stack (isolated trees)

    # ---- namespaces -----------------------------------------------------------

    def namespace(self) -> str:
        """Names resolve in the innermost tree active in this thread, else the process's."""
        stack = getattr(self.local, "stack", None)
        return stack[-1] if stack else self.ns

    def push_namespace(self, ns: str) -> None:
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = []
        stack.append(ns)

    def pop_namespace(self, ns: str) -> None:
        stack = self.local.stack
        if not stack or stack[-1] != ns:
            raise NamespaceError(f"namespaces must be left in reverse order of entry: {ns!r} "
                                 f"is not the innermost ({stack[-1] if stack else None!r} is)")
        stack.pop()

    # ---- reading ----------------------------------------------------------------

    def _read(self, deadline: float | None) -> list:
        """Read once from the inbound stream (reader role held, lock not held)."""
        sock = self.inbound
        flags = 0
        remaining = None
        if deadline is not None:
            remaining = deadline - _monotonic()
            if remaining <= 0.000001:
                flags = socket.MSG_DONTWAIT
        if not flags:
            self.status.set(self.pid.serial, WAITING, len(self.mailbox))
        # What is there already is read without blocking. Only if there is
        # nothing: spin (not while other threads sleep here: the threads it
        # wakes need the CPU, and spinning then measured no faster), then
        # block in a read that releases the GIL.
        reader = self.reader
        got = reader.read_nowait(sock, self.keep_gil)
        if got is None and not flags:
            spun = not self.sleepers and self.spin_ns
            if spun:
                got = self._spin(sock, remaining)
            if got is None:
                if remaining is not None:
                    remaining = max(0.000001, deadline - _monotonic())  # after the spin
                self._set_timeout(sock, remaining)
                blocked_at = _perf_ns()
                try:
                    got = reader.read(sock)
                except BlockingIOError:
                    pass
                if spun and got is not None:  # (a wait that timed out says nothing)
                    if _perf_ns() - blocked_at < HOT_NS:
                        self.spin_ns = min(2 * self.spin_ns, SPIN_MAX_NS)
                    else:
                        self.spin_ns = max(self.spin_ns // 2, SPIN_NS)
        if got is None:
            return []
        if not got:
            self.gone = True
            return []
        items = []
        for kind, body in self.reader.frames():
            if kind == wire.CTRL:
                item = self._decode_ctrl(body)
                if item is not _WAKE:
                    items.append(item)
            elif kind == wire.CTRL_FD:
                fd, body = body
                reply = self._decode_ctrl(body)
                reply.value = socket.socket(fileno=fd)
                items.append(reply)
            else:
                try:
                    items.append(wire.decode(kind, body))
                except BaseException as exc:  # SystemExit from a __reduce__, say: never raised
                    items.append(undecodable(body, exc))
        return items

    def _set_timeout(self, sock: socket.socket, seconds: float | None) -> None:
        """SO_RCVTIMEO bounds the blocking read (Python's own socket timeout
        would poll first, which costs a round trip's worth)."""
        if seconds == self.rcvtimeo:
            return
        if seconds is None:
            value = _TIMEVAL.pack(0, 0)
        else:
            sec = int(seconds)
            value = _TIMEVAL.pack(sec, max(1, int((seconds - sec) * 1e6)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.rcvtimeo = seconds

    def _spin(self, sock: socket.socket, remaining: float | None) -> bool | None:
        """Poll for up to spin_ns (never past ``remaining`` seconds): the first
        read's result, None if nothing came.

        Before each poll the CPU is offered to any other runnable process,
        and the GIL to the process's other threads: a spin must not keep
        either from the process it waits for (when processes outnumber cores,
        that process may be waiting for this very CPU). A yield that comes
        back late means something else had work to do: the spin is then cut
        to SPIN_NS, and so is spin_ns. Measured with 8 callers and 2 pool
        workers on 2 cores: synchronous commands went from 20k/s to 14k/s
        with a longer spin that did not yield, and to 32-36k/s with this.
        """
        read = self.reader.read_nowait
        keep_gil = self.keep_gil
        limit = self.spin_ns
        if remaining is not None:
            limit = min(limit, int(remaining * 1e9))
        start = _perf_ns()
        until = start + limit
        while True:
            before = _perf_ns()
            if before >= until:
                return None
            os.sched_yield()  # lets go of the GIL too: costs nothing if no thread wants it
            if _perf_ns() - before > YIELDED_NS and self.spin_ns > SPIN_NS:
                self.spin_ns = SPIN_NS
                until = min(until, start + SPIN_NS)
            got = read(sock, keep_gil)
            if got is not None:
                return got

    def _decode_ctrl(self, body: bytes) -> Any:
        term = wire.decode(wire.MSG, body)
        tag = term[0]
        if tag == "reply":
            return _Reply(term[1], term[2])
        if tag == "exit":
            _, pid, rbody, fatal = term
            reason = reasons.unpack(rbody)
            if fatal:
                return _Fatal(reason)
            return Exit(pid, reason)
        if tag == "down":
            _, ref, pid, rbody = term
            return Down(ref, pid, reasons.unpack(rbody))
        if tag == "dead":
            _, pid, rbody = term
            return _Dead(pid, reasons.unpack(rbody))
        if tag == "wake":  # see _wake_reader
            return _WAKE
        if tag == "fault":  # failure injection (otpy.testing); see faults.py
            from . import faults

            return faults.received(self, term)
        raise OtpyError(f"unknown control frame {tag!r}")

    def _apply(self, items: list) -> None:
        """File what was read (lock held); queue the sleepers it concerns in to_wake."""
        mailbox = self.mailbox
        awaiting = self.awaiting
        keys = []  # what was filed, for the sleepers
        mail = everyone = False
        for item in items:
            t = type(item)
            if t is _Reply:
                if item.req_id in self.abandoned_requests:
                    self.abandoned_requests.discard(item.req_id)  # late: nobody waits
                else:
                    self.replies[item.req_id] = item.value
                    keys.append(item.req_id)
            elif t is tuple and len(item) == 3 and item[0] == REPLY and type(item[1]) is Ref:
                ref = item[1]
                if ref in awaiting:
                    awaiting[ref] = item[2]  # filed by ref: the caller never scans
                    keys.append(ref)
                elif self.abandoned and ref in self.abandoned:
                    del self.abandoned[ref]  # a late reply: dropped, never a stray message
                else:
                    mailbox.append(item)
                    mail = True
            elif t is _Dead:
                self.watched.discard(item.pid.serial)
                self.dead[item.pid.serial] = item.reason
                if len(self.dead) > 4096:
                    del self.dead[next(iter(self.dead))]
                everyone = True  # a caller of that process may be asleep
            elif t is _Fatal:
                self.fatal = ProcessExit(item.reason)
                everyone = True
            else:
                mailbox.append(item)
                mail = True
                if t is Exit and self.is_main and item.reason not in ("normal", "shutdown") \
                        and on_trapped_exit is not None:
                    on_trapped_exit(self, item)
        if self.keyed_tasks or self.tasks:
            self._wake_tasks(keys, mail, everyone)
        sleepers = self.sleepers
        if sleepers:
            if everyone:
                self.to_wake.extend(sleepers)
                return
            for key in keys:
                sleeper = self.keyed.get(key)
                if sleeper is not None:
                    self.to_wake.append(sleeper)
            if (mail or keys) and len(self.keyed) < len(sleepers):
                self.to_wake.extend(s for s, key in sleepers.items() if key is None)

    def _wake_tasks(self, keys: list, mail: bool, everyone: bool) -> None:
        """Wake the asyncio tasks whose wait what was filed can end (lock held)."""
        tasks = self.tasks
        keyed = self.keyed_tasks
        if everyone:
            for task in (*tasks, *keyed.values()):
                task.wake()
            return
        if keyed:
            for key in keys:
                task = keyed.get(key)
                if task is not None:
                    task.wake()
        if tasks and (mail or keys):
            for task in tasks:  # (a wake only schedules: the dict cannot change meanwhile)
                task.wake()

    def read_available(self) -> bool:
        """Read and file what has arrived, without blocking, unless another
        thread holds the reader role (then False: that thread files it).
        How an event loop reads (aio.py): it never blocks in the socket."""
        with self.lock:
            if self.reading:
                return False
            self.reading = True
            self.reading_thread = _thread_id()
            items: list = []
            try:
                self.lock.release()
                try:
                    items = self._read(0.0)
                finally:
                    self.lock.acquire()
            finally:
                self.reading = False
                if items:
                    self._apply(items)
                elif self.gone:
                    self._wake_tasks([], False, True)
                if self.to_wake:
                    self._wake()
                if self.sleepers:  # a sleeping thread takes the reader role back
                    next(iter(self.sleepers)).wake()
        return True

    def _wake(self) -> None:
        """Wake the sleepers queued in to_wake (lock held)."""
        for sleeper in self.to_wake:
            sleeper.wake()
        self.to_wake.clear()

    def wait_for(self, check: Callable[[], Any], deadline: float | None,
                 key: Any = None) -> Any:
        """Read until ``check()`` (called with the lock held) returns non-None.

        ``key`` says what can end the wait, so that a thread sleeping while
        another reads is woken only for it: a call's ref, a request id, or
        None (anything filed). Returns None when the deadline passes. Raises
        RuntimeGone if the node is gone, and ProcessExit for the program's
        process when a signal it does not trap told it to exit.
        """
        with self.lock:
            try:
                return self._wait_for(check, deadline, key)
            finally:
                # what process_info reports: running, with the mailbox as it is now
                self.status.set(self.pid.serial, RUNNING, len(self.mailbox))
                if self.to_wake:
                    self._wake()
                if not self.reading and self.sleepers:
                    # Someone must go on reading: hand the role to one sleeper.
                    next(iter(self.sleepers)).wake()

    def _wait_for(self, check: Callable[[], Any], deadline: float | None, key: Any) -> Any:
        lock = self.lock
        while True:
            if self.fatal is not None:
                fatal, self.fatal = self.fatal, None
                raise fatal
            result = check()
            if result is not None:
                return result
            if self.gone:
                raise RuntimeGone("the otpy node is gone")
            if self.reading:
                remaining = None
                if deadline is not None:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return None
                self._sleep(key, remaining)
                continue
            self.reading = True
            self.reading_thread = _thread_id()
            if self.to_wake:
                self._wake()
            lock.release()
            try:
                items = self._read(deadline)
            finally:
                lock.acquire()
                self.reading = False
            if items:
                self._apply(items)
            elif deadline is not None and _monotonic() >= deadline:
                return check()
            elif self.gone:
                for sleeper in self.sleepers:
                    sleeper.wake()

    def _sleep(self, key: Any, timeout: float | None) -> None:
        """Sleep (lock held; released meanwhile) until woken or ``timeout``."""
        sleeper = getattr(self.local, "sleeper", None)
        if sleeper is None:
            sleeper = self.local.sleeper = _Sleeper()
        sleeper.woken = False
        self.keep_gil = True
        if key is not None:
            self.keyed[key] = sleeper  # keys are unique: a call's ref, a request's id
        self.sleepers[sleeper] = key
        self.lock.release()
        try:
            acquired = sleeper.lock.acquire(True, -1 if timeout is None else timeout)
        finally:
            self.lock.acquire()
            del self.sleepers[sleeper]
            if key is not None:
                del self.keyed[key]
        if not acquired and sleeper.woken:
            sleeper.lock.acquire()  # woken just after the timeout: reset

    # ---- mailbox ----------------------------------------------------------------

    def receive(self, timeout: float | None, match: Callable[[Any], bool] | None) -> Any:
        deadline = None if timeout is None else _monotonic() + timeout
        found = self.wait_for(self.taker(match), deadline)
        if found is None:
            raise Timeout(f"receive timed out after {timeout}s")
        return found[0]

    def taker(self, match: Callable[[Any], bool] | None) -> Callable[[], Any]:
        """A wait's check that takes the first queued message ``match`` accepts."""
        mailbox = self.mailbox
        if match is None:
            def check():
                if mailbox:
                    return (mailbox.popleft(),)
                return None
        else:
            def check():
                for i, message in enumerate(mailbox):
                    if match(message):
                        del mailbox[i]
                        return (message,)
                return None
        return check

    def take(self, match: Callable[[Any], bool]) -> int:
        """Remove every queued message matching ``match`` (lock taken here)."""
        with self.cond:
            kept = [m for m in self.mailbox if not match(m)]
            taken = len(self.mailbox) - len(kept)
            self.mailbox.clear()
            self.mailbox.extend(kept)
        return taken

    # ---- requests to the zygote --------------------------------------------------

    def request(self, op: str, *args: Any, timeout: float = REQUEST_TIMEOUT) -> Any:
        req_id = next(self.req_ids)
        self._send_ctrl(req_id, op, args)
        replies = self.replies

        def check():
            if req_id in replies:
                return (replies.pop(req_id),)
            return None

        try:
            found = self.wait_for(check, _monotonic() + timeout, req_id)
        except BaseException:  # a fatal exit signal, say: the reply is dropped on arrival
            self._abandon_request(req_id)
            raise
        if found is None:
            found = self._abandon_request(req_id)
        if found is None:
            raise Timeout(f"the otpy zygote did not answer {op!r} within {timeout}s")
        value = found[0]
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "error":
            raise OtpyError(f"zygote failed on {op!r}: {value[1]}")
        return value

    def _abandon_request(self, req_id: int) -> tuple[Any] | None:
        """A request gave up: its reply if it came as the wait ended, else
        None, and the reply is dropped when it comes."""
        with self.lock:
            if req_id in self.replies:
                return (self.replies.pop(req_id),)
            self.abandoned_requests.add(req_id)
            return None

    def cast_ctrl(self, op: str, *args: Any) -> None:
        self._send_ctrl(0, op, args)

    def _send_ctrl(self, req_id: int, op: str, args: tuple) -> None:
        kind, body = wire.encode((req_id, op, args))
        try:
            with self.ctrl_lock:
                wire.send_frame(self.ctrl, wire.CTRL, body)
        except OSError as exc:
            self.gone = True
            raise RuntimeGone(f"the otpy node is gone ({exc})") from None

    # ---- sending ----------------------------------------------------------------

    def resolve(self, dest: Any) -> Pid:
        if type(dest) is Pid:
            return dest
        if isinstance(dest, str):
            pid = self.whereis(dest)
            if pid is None:
                raise NoProc(dest, f"no process is registered as {dest!r}")
            return pid
        raise TypeError("destination must be a Pid or a registered name, "
                        f"not {type(dest).__name__}")

    def send(self, dest: Any, message: Any, timeout: Any = _DEFAULT) -> None:
        """``timeout``: seconds, None (no limit) or _DEFAULT (SEND_TIMEOUT)."""
        pid = self.resolve(dest)
        kind, body = wire.encode(message)
        deadline = timeout if timeout is None or timeout is _DEFAULT else _monotonic() + timeout
        self.send_encoded(pid, kind, body, deadline)

    def send_encoded(self, pid: Pid, kind: int, body: bytes, deadline: Any = _DEFAULT) -> None:
        """Write one frame to ``pid``. While its buffer is full, wait for room
        until ``deadline`` (monotonic; None: as long as it takes; by default
        SEND_TIMEOUT from now), then raise Timeout having written nothing."""
        if pid == self.pid:
            self._send_to_self(kind, body)
            return
        sock = self.out.get(pid.serial)
        if sock is None:
            sock = self._open(pid)
            if sock is None:
                return  # dead: dropped, as Erlang does
        big = self.big_frames(pid.serial, body)
        try:
            if not wire.try_send_frame(sock, kind, body, self.keep_gil, big):
                self._send_blocked(pid, sock, kind, body, deadline)
        except (BrokenPipeError, ConnectionResetError):
            self._forget(pid.serial, sock)

    def big_frames(self, serial: int, body: bytes) -> wire.BigFrames | None:
        """This sender's big frames to ``serial`` if ``body`` travels as one
        (wire.BigFrames), else None: a body that fits the stream costs a
        length check."""
        if len(body) <= wire.INLINE_MAX:
            return None
        big = self.big_out.get(serial)
        if big is None:
            with self.out_lock:
                big = self.big_out.get(serial)
                if big is None:
                    big = self.big_out[serial] = wire.BigFrames()
        return big

    def _send_to_self(self, kind: int, body: bytes) -> None:
        """A message to our own mailbox, filed at once (in send order). If
        another thread is blocked reading our stream (a server's loop, sent
        to by a thread of its own), a wake-up frame follows: that thread
        wakes only for a frame, then finds the message filed."""
        try:
            message = wire.decode(kind, body)  # a copy, as any other receiver gets
        except BaseException as exc:
            message = undecodable(body, exc)
        with self.lock:
            self._apply([message])
            self._wake()
            # A signal handler in the reading thread itself wakes nobody: the
            # stream to ourselves may not be open, and the zygote's answer to
            # opening it would come to this very thread. Its read sees the
            # message when it next returns (a frame, or its deadline).
            another_reads = self.reading and self.reading_thread != _thread_id()
        if another_reads:
            self._wake_reader()

    def _wake_reader(self) -> None:
        """A frame that files nothing, to our own stream, never waiting: a
        full stream has frames for its reader already. (The message is
        filed: a failure here costs the reader's promptness only.)"""
        sock = None
        try:
            sock = self.out.get(self.pid.serial) or self._open(self.pid)
            if sock is not None:
                wire.try_send_frame(sock, wire.CTRL, _WAKE_BODY, self.keep_gil)
        except (BrokenPipeError, ConnectionResetError):
            if sock is not None:
                self._forget(self.pid.serial, sock)
        except (OtpyError, OSError):  # the node going away: its reader wakes for that
            pass

    def _send_blocked(self, pid: Pid, sock: socket.socket, kind: int, body: bytes,
                      deadline: Any) -> None:
        """The receiver's buffer is full (or this sender's big frames to it
        are unread): wait for room until the deadline."""
        if deadline is _DEFAULT:
            deadline = _monotonic() + SEND_TIMEOUT
        started = _monotonic()
        while True:
            big = self.big_frames(pid.serial, body)  # (afresh: evicted meanwhile, say)
            remaining = None if deadline is None else deadline - _monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(
                    f"send to {pid!r} blocked for {_monotonic() - started:.3g}s and gave up: "
                    f"its inbound buffer is full ({unread_bytes(sock, big)} bytes unread); "
                    "the receiver is not reading its messages. Nothing was sent.")
            poller = select.poll()
            acks = None if big is None or big.room(len(body)) else big.watched()
            try:
                if acks is None:
                    poller.register(sock, select.POLLOUT)
                else:  # an acknowledgement comes as the receiver reads; a hang-up if it dies
                    poller.register(acks, select.POLLIN)
                    poller.register(sock, 0)
                poller.poll(None if remaining is None else max(1, int(remaining * 1000 + 0.999)))
            finally:
                if acks is not None:
                    os.close(acks)
            if wire.try_send_frame(sock, kind, body, self.keep_gil, big):
                return

    def _open(self, pid: Pid) -> socket.socket | None:
        if pid.node != self.node:
            return None
        sock = self.request("open", pid.serial)
        if sock is None:
            return None
        return self._keep_out(pid.serial, sock)

    def _keep_out(self, serial: int, sock: socket.socket) -> socket.socket:
        """Cache ``sock``, a stream to ``serial``; the one cached (another
        thread may have opened one meanwhile)."""
        with self.out_lock:
            existing = self.out.get(serial)
            if existing is not None:
                sock.close()
                return existing
            if len(self.out) >= OUT_CACHE:
                oldest = next(iter(self.out))
                self.out.pop(oldest).close()
                self._evicted_big(oldest)
            self.out[serial] = sock
        return sock

    def _forget(self, serial: int, sock: socket.socket) -> None:
        with self.out_lock:
            if self.out.get(serial) is sock:
                del self.out[serial]
                sock.close()
                self._forget_big(serial)

    def _forget_big(self, serial: int) -> None:
        big = self.big_out.pop(serial, None)
        if big is not None:
            big.close()

    def _evicted_big(self, serial: int) -> None:
        """A stream left the cache, its receiver alive: its big frames still
        count while any is unread (else a sender fanning out to more than
        OUT_CACHE receivers would have no bound), up to OUT_CACHE such
        receivers (two descriptors each); past that, the oldest's count goes."""
        big = self.big_out.get(serial)
        if big is not None and not big.unread():
            self._forget_big(serial)
        if len(self.big_out) > OUT_CACHE:
            self._forget_big(next(iter(self.big_out)))

    # ---- names ------------------------------------------------------------------

    def whereis(self, name: str) -> Pid | None:
        if not isinstance(name, str):
            raise TypeError(f"a name must be a str, not {type(name).__name__}")
        key = (self.namespace(), name)
        generation = self.status.generation()
        hit = self.names.get(key)
        if hit is not None and hit[1] == generation:
            return hit[0]
        pid = self.request("whereis", key[0], name)
        self.names[key] = (pid, generation)
        return pid

    def register(self, name: str, pid: Pid) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a name must be a non-empty str, not {name!r}")
        outcome, detail = self.request("register", self.namespace(), name, pid.serial)
        if outcome == "taken":
            raise AlreadyRegistered(name, detail)
        if outcome == "noproc":
            raise NoProc(pid, f"cannot register {name!r}: {pid!r} is not alive")
        if outcome == "named":
            raise AlreadyRegistered(name, pid, f"{pid!r} is already registered as {detail!r}")
        if pid == self.pid:
            self.name = name

    # ---- calls: wait for a reply or the callee's death ----------------------------

    def watch(self, pid: Pid) -> Any:
        """Make sure a "dead" notice for ``pid`` will reach us; its reason if dead.

        A stream to ``pid`` not opened yet comes with the same request: a
        first call to a process is one request to the zygote, not two."""
        serial = pid.serial
        if serial in self.watched:
            return None
        if pid.node != self.node:
            return "noproc"
        dead = self.request("watch", serial, serial not in self.out)
        if isinstance(dead, socket.socket):  # alive, and here is its inbound stream
            self._keep_out(serial, dead)
            dead = None
        if dead is not None:
            return reasons.unpack(dead)
        self.watched.add(serial)
        return None

    def call(self, pid: Pid, message: Any, ref: Ref, timeout: float | None) -> Any:
        """Send ``message`` (which carries ``ref``) and wait for ``(REPLY, ref, value)``.

        Raises NoProc at once if ``pid`` is dead, Exited with its reason if it
        dies before replying, Timeout when ``timeout`` expires (the reply, if
        it comes later, is dropped on arrival).
        """
        kind, body, deadline, check = self.start_call(pid, message, ref, timeout)
        try:
            try:
                self.send_encoded(pid, kind, body, deadline)
            except Timeout:
                raise _send_timeout(pid, timeout) from None
            found = self.wait_for(check, deadline, ref)
        except BaseException:
            self._abandon(ref)
            raise
        return self.finish_call(found, pid, ref, timeout)

    def send_request(self, pid: Pid, message: Any, ref: Ref,
                     timeout: float | None) -> "PendingReply":
        """A call's send, its wait left to ``PendingReply`` (any thread may take it)."""
        kind, body, deadline, check = self.start_call(pid, message, ref, timeout)
        try:
            self.send_encoded(pid, kind, body, deadline)
        except BaseException as exc:
            self._abandon(ref)
            if isinstance(exc, Timeout):
                raise _send_timeout(pid, timeout) from None
            raise
        return PendingReply(self, pid, ref, timeout, deadline, check)

    def start_call(self, pid: Pid, message: Any, ref: Ref, timeout: float | None) -> tuple:
        """A call's first half (aio.py has its own wait): the encoded request,
        its deadline, and the wait's check, with ``ref`` registered as awaited."""
        if pid == self.pid:
            raise Exited(("calling_self", message), pid,
                         f"{pid!r} called itself: that would wait forever")
        dead = self.watch(pid)
        if dead is not None:
            raise NoProc(pid)
        kind, body = wire.encode(message)
        deadline = None if timeout is None else _monotonic() + timeout
        awaiting = self.awaiting
        # Registered before the send: the reply can only come after it, and
        # is then filed under ``ref`` (the receive marker of OTP, in effect).
        if ref in awaiting:  # two waits on one ref: one would take the other's reply
            raise ValueError(f"{ref!r} is already awaited by another call of this "
                             f"process: each request needs a ref of its own (Ref.make)")
        awaiting[ref] = _WAITING
        return kind, body, deadline, _ReplyCheck(self, ref, pid)

    def finish_call(self, found: Any, pid: Pid, ref: Ref, timeout: float | None) -> Any:
        """A call's second half: the reply, or the error it stands for."""
        if found is None:
            self._abandon(ref)
            raise Timeout(f"call to {pid!r} timed out after {timeout}s")
        del self.awaiting[ref]
        value = found[0]
        if type(value) in _FAILURES:
            raise value.error_from(pid)
        return value

    def _abandon(self, ref: Ref) -> None:
        """A call gave up: a reply that comes later is dropped on arrival."""
        with self.lock:
            del self.awaiting[ref]
            self._drop_late(ref)

    def drop_late_reply(self, ref: Ref) -> None:
        """A call that was answered: a second answer (from another process
        that could not know) is dropped on arrival, never a stray message."""
        with self.lock:
            self._drop_late(ref)

    def _drop_late(self, ref: Ref) -> None:
        self.abandoned[ref] = None
        if len(self.abandoned) > 10000:
            del self.abandoned[next(iter(self.abandoned))]

    def close(self) -> None:
        for sock in self.out.values():
            sock.close()
        self.out.clear()
        for big in self.big_out.values():
            big.close()
        self.big_out.clear()
        self.reader.close()
        self.inbound.close()
        self.ctrl.close()


def unread_bytes(sock: socket.socket, big: wire.BigFrames | None) -> int:
    """What a receiver has not read: its stream's bytes, and this sender's big bodies."""
    return wire.unread_bytes(sock) + (big.size if big is not None else 0)


class _ReplyCheck:
    """A call's wait check: ``(reply,)`` once it is filed, Exited if the
    callee died first, else None. One object, where a closure over the same
    took five cells besides: 1,000 calls waiting in a loop are that many
    fewer objects for the garbage collector to track and traverse."""

    __slots__ = ("ctx", "ref", "pid")

    def __init__(self, ctx: ProcessContext, ref: Ref, pid: Pid) -> None:
        self.ctx = ctx
        self.ref = ref
        self.pid = pid

    def __call__(self) -> tuple[Any] | None:
        ctx = self.ctx
        value = ctx.awaiting[self.ref]
        if value is not _WAITING:
            return (value,)
        serial = self.pid.serial
        if serial in ctx.dead:
            raise Exited(ctx.dead[serial], self.pid)
        return None


NOT_YET: Any = type("NotYet", (), {"__repr__": lambda self: "NOT_YET"})()
_WAKE: Any = object()  # a wake-up frame, decoded: nothing to file (see _wake_reader)
_WAKE_BODY = wire.encode(("wake",))[1]


class PendingReply:
    """A request sent whose reply is not taken yet (``send_request``). It is
    taken once, by ``wait`` in any thread of the process or ``areply`` in any
    thread's event loop: the request's sender need not be its taker."""

    __slots__ = ("ctx", "pid", "ref", "timeout", "deadline", "check")

    def __init__(self, ctx: ProcessContext, pid: Pid, ref: Ref, timeout: float | None,
                 deadline: float | None, check: "_ReplyCheck") -> None:
        self.ctx, self.pid, self.ref, self.timeout = ctx, pid, ref, timeout
        self.deadline, self.check = deadline, check

    def wait(self, limit: float | None = None) -> Any:
        """The reply, or the request's error (as ``call`` raises it). With
        ``limit``: NOT_YET if neither came within ``limit`` seconds, before
        the request's own deadline; the reply can still be taken later, as
        it can after a KeyboardInterrupt here."""
        ctx, until, early = self.ctx, self.deadline, False
        if limit is not None:
            at = _monotonic() + limit
            if until is None or at < until:
                until, early = at, True
        try:
            found = ctx.wait_for(self.check, until, self.ref)
        except KeyboardInterrupt:
            raise
        except BaseException:
            ctx._abandon(self.ref)
            raise
        if found is None and early:
            return NOT_YET
        return ctx.finish_call(found, self.pid, self.ref, self.timeout)


class _Sleeper:
    """A thread's own wake-up: a lock it sleeps on, held until woken (cheaper
    than a condition, and it wakes that one thread only)."""

    __slots__ = ("lock", "woken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.woken = False

    def wake(self) -> None:
        """Called with the process's lock held."""
        if not self.woken:
            self.woken = True
            self.lock.release()


class CallFailed:
    """A reply that makes the caller's call raise ``error`` (a server that
    could not decode the request answers with one)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self):
        return (CallFailed, (self.error,))

    def error_from(self, sender: Pid) -> BaseException:
        return self.error


class UndecodableReply(CallFailed):
    """Stands for a reply frame the caller could not decode (made by the
    reader, never sent): the call that waits for it raises SerializationError
    at once, naming the sender, what failed and why."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        super().__init__(SerializationError(f"a reply could not be decoded: {what}"))
        self.what = what

    def error_from(self, sender: Pid) -> BaseException:
        return SerializationError(f"the reply from {sender!r} could not be decoded here: "
                                  f"{self.what}")


_FAILURES = (CallFailed, UndecodableReply)
# A reply's pickle starts with its tag: a frame that fails to decode is
# salvaged (slow) only if the tag is in its first bytes.
_REPLY_MARK = REPLY.encode()


def _send_timeout(pid: Pid, timeout: float | None) -> Timeout:
    return Timeout(f"call to {pid!r} timed out after {timeout}s while sending: its inbound "
                   "buffer stayed full (the request was not sent)")


def undecodable(body: Any, exc: BaseException) -> Any:
    """What a frame that failed to decode (with ``exc``) becomes. A reply is
    still a reply, whose value makes the waiting call raise
    SerializationError (the call ends at once instead of waiting out its
    timeout); anything else is an otpy.BadMessage, for the receiver to log
    or answer."""
    data = bytes(body)
    cause = f"{type(exc).__name__}: {exc}"
    if _REPLY_MARK in data[:48]:
        term, problems = wire.salvage(data)
        if type(term) is tuple and len(term) == 3 and term[0] == REPLY and type(term[1]) is Ref:
            return (REPLY, term[1], UndecodableReply("; ".join(problems) or cause))
    return BadMessage(cause, data)


class _Reply:
    __slots__ = ("req_id", "value")

    def __init__(self, req_id: int, value: Any) -> None:
        self.req_id = req_id
        self.value = value


class _Dead:
    __slots__ = ("pid", "reason")

    def __init__(self, pid: Pid, reason: Any) -> None:
        self.pid = pid
        self.reason = reason


class _Fatal:
    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason


# ---- the current process ----------------------------------------------------------

current: ProcessContext | None = None


def run_child(pid: Pid, ns: str, name: str | None, parent: Pid, inbound: socket.socket,
              ctrl: socket.socket, to_parent: int, status: StatusTable, zygote_os_pid: int,
              kind: int, payload: bytes) -> int:
    """Run a spawned process's body; report its exit reason; return the exit
    code. ``name``: registered for it by the zygote at its spawn, if any;
    ``to_parent``: the spawner's inbound stream, from the zygote."""
    global current
    ctx = ProcessContext(pid, ns, parent, inbound, ctrl, status, zygote_os_pid,
                         trap=False, is_main=False)
    ctx.name = name
    ctx.out[parent.serial] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, to_parent)
    current = ctx
    try:
        fn, args, kwargs = wire.decode(kind, payload)
        fn(*args, **kwargs)
        reason: Any = "normal"
    except BaseException as exc:  # the body's way out decides the exit reason
        reason = reasons.from_exception(exc)
    try:
        cls, body = reasons.pack(reason, pid)
        ctx.cast_ctrl("last_words", cls, body, reasons.describe(reason))
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return 0 if reason == "normal" else 1
