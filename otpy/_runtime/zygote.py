"""The zygote: one single-threaded process per node that forks every otpy
process and keeps the node's tables (processes, links, monitors, names, timers).

Why one process does both: forking from a single-threaded process is safe,
and the parent of a process is the only one that learns how it died (its wait
status). The zygote is the control plane only: messages go straight from
sender to receiver; the zygote hands out a copy of a receiver's inbound write
end once per pair and never sees the traffic.

The state machine of a process entry::

    alive --(exit signal / link / "kill")--> exiting --(pidfd readable)--> reaped
    alive --(pidfd readable)--------------------------------------------> reaped

On reaping: the reason is the pending reason (set when the zygote killed it),
else the process's last words, else what the wait status says. Then, in this
order: its name is released, call watchers get "dead", linked processes get
Exit (trapping) or are killed with the same reason, and monitors get Down.
Everything the zygote sends a process goes into that process's inbound stream,
behind whatever the dead process had already sent it: so Down never overtakes
a message.

The zygote never unpickles a user term: reasons and timer messages travel as
opaque bytes with a classification ("normal" / "kill" / "other") made by the
sender.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import gc
import heapq
import itertools
import json
import os
import pickle
import resource
import select
import signal
import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Iterable

from . import log, process, reasons, spare, tables, wire
from .keeper import children
from .observe import REQUEST_SIGNAL, Page
from .rows import P, PageRow, ProcessRow, process_label
from .status import STATE_NAMES, StatusTable
from .terms import Pid, Ref

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)

TOMBSTONES = 4096  # recent death reasons kept for late "watch" requests
RECENT_EXITS = 100  # deaths shown to an observer
# How soon the zygote looks again for what dead processes left behind: soon
# after killing some (to reap them and find their own orphans), rarely while
# only orphans still in a live process's group remain (to reap them once done).
SWEEP_AGAIN = 0.01
SWEEP_IDLE = 1.0


def prctl_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def subreaper() -> None:
    """Become the parent of every descendant orphaned below this process."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


class _RequestReader(wire.FrameReader):
    """A process's request stream, as the zygote reads it.

    The zygote reads one stream at a time, so every stream shares one receive
    buffer: a buffer each cost 256 KiB of zygote memory per live process, and
    every later fork inherited all of them (282 MiB of RSS at 1,000 processes).
    """

    __slots__ = ()
    _shared_chunk = wire.receive_buffer()
    _shared_view = memoryview(_shared_chunk)

    def __init__(self) -> None:  # no super().__init__(): it would allocate a buffer
        self.buf = bytearray()
        self.fds = []
        self._chunk = self._shared_chunk
        self._view = self._shared_view
        self._receiver = None


class Entry(tables.Relations):
    """The zygote's record of one live process: its relations (the pure core's
    part, see tables.py), its streams and what it will be remembered by."""

    __slots__ = (
        "ns", "name", "name_ns", "parent", "started_at", "is_main",
        "write", "ctrl", "reader", "pidfd", "pending", "last_words", "summary", "backlog",
        "exiting", "meta", "last_name",
    )

    def __init__(self, pid: Pid, ns: str, parent: Pid | None, write: socket.socket,
                 ctrl: socket.socket, pidfd: int, trap: bool, is_main: bool) -> None:
        super().__init__(pid, trap)
        self.ns = ns  # the namespace it was spawned in: which tree it belongs to
        self.name: str | None = None
        self.last_name: str | None = None  # kept after the name is released, for logs
        self.name_ns = ns  # where its name is registered
        self.parent = parent
        self.started_at = time.time()
        self.is_main = is_main
        self.write = write  # this process's inbound write end
        self.ctrl = ctrl  # requests from this process
        self.reader = _RequestReader()
        self.pidfd = pidfd
        self.pending: tuple[str, bytes] | None = None
        self.last_words: tuple[str, bytes] | None = None
        self.summary: str | None = None  # the exit reason as text, with pending/last_words
        # frames its full stream could not take yet; () until the first one,
        # as an empty deque costs 760 bytes a process (1,000s of processes)
        self.backlog: deque[tuple[bytes, int | None]] | tuple[()] = ()
        self.exiting = False
        self.meta: dict[str, Any] = {}  # what behaviours say it is (kind, supervisor, ...)


class Zygote:
    def __init__(self, node: str, status: StatusTable, main_pid: Pid, main_write: socket.socket,
                 main_ctrl: socket.socket) -> None:
        self.node = node
        self.status = status
        self.os_pid = os.getpid()
        self.ep = select.epoll()
        self.procs: dict[int, Entry] = {}
        # Every descriptor held for a process (its streams, its pidfd, fds
        # waiting to be handed over): what a new child closes, without
        # touching the entries (see _child).
        self.held = _FdSet()
        self.by_fd: dict[int, tuple[str, Entry | None]] = {}
        self.names: dict[tuple[str, str], int] = {}
        self.tombstones: dict[int, bytes] = {}
        self.timers: list[tuple[float, int, Ref]] = []
        self.timer_data: dict[Ref, tuple[float, Any, str, int, bytes]] = {}
        self.timer_seq = itertools.count()
        self.serials = itertools.count(main_pid.serial + 1)
        self.os_pids: set[int] = set()  # of the processes in procs: the rest of our children
        # are leftovers of dead processes (see sweep)
        self.sweep_at: float | None = None
        # The process the next spawn is handed to (spare.py), forked when the
        # zygote is idle after a spawn took the last one.
        self.spare: spare.Spare | None = None
        self.spare_wanted = False
        self.dill_loaded = False  # dill loaded here: children inherit it
        self.running = True
        self.main_pid = main_pid
        self.started_at = time.time()
        self.recent_exits: deque[dict] = deque(maxlen=RECENT_EXITS)
        # Counts for otpy.metrics, published with the page: integers bumped
        # where the events already pass, nothing more on the hot path.
        self.spawns = 0
        self.exits = dict.fromkeys(reasons.EXIT_CLASSES, 0)
        self.tallies: dict[tuple[str, str, str | None], int] = {}  # (event, label, detail)
        main = Entry(main_pid, "", None, main_write, main_ctrl, -1, True, True)
        self.status.claim(main_pid.serial)
        self._add(main)
        # An observer's request is a signal; the wakeup fd turns it into an epoll event.
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_w = wake_w
        signal.signal(REQUEST_SIGNAL, lambda signum, frame: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.ep.register(self.wake_r, select.EPOLLIN)
        self.by_fd[self.wake_r] = ("observe", None)
        self.page = Page()  # last: a request can only come once the page can be found
        self.ops: dict[str, Callable[..., Any]] = {
            "spawn": self.op_spawn, "open": self.op_open, "link": self.op_link,
            "unlink": self.op_unlink, "monitor": self.op_monitor, "demonitor": self.op_demonitor,
            "watch": self.op_watch, "trap": self.op_trap, "exit": self.op_exit,
            "register": self.op_register, "unregister": self.op_unregister,
            "whereis": self.op_whereis, "registered": self.op_registered,
            "is_alive": self.op_is_alive, "info": self.op_info, "timer": self.op_timer,
            "cancel_timer": self.op_cancel_timer, "last_words": self.op_last_words,
            "processes": self.op_processes, "shutdown": self.op_shutdown,
            "annotate": self.op_annotate, "log_config": self.op_log_config,
            "tally": self.op_tally,
            "kill": self.op_kill,
        }

    # ---- bookkeeping -------------------------------------------------------

    def _add(self, e: Entry) -> None:
        """Record ``e``, whose status slot is already claimed."""
        self.procs[e.pid.serial] = e
        self.os_pids.add(e.pid.os_pid)
        self.held.add(e.ctrl.fileno())
        self.held.add(e.write.fileno())
        if e.pidfd >= 0:
            self.held.add(e.pidfd)
        self.ep.register(e.ctrl.fileno(), select.EPOLLIN)
        self.by_fd[e.ctrl.fileno()] = ("ctrl", e)
        if e.pidfd >= 0:
            self.ep.register(e.pidfd, select.EPOLLIN)
            self.by_fd[e.pidfd] = ("pidfd", e)

    def _alloc_serial(self) -> int:
        while True:
            serial = next(self.serials)
            if self.status.slot_free(serial):
                return serial

    def live(self, serial: int) -> Entry | None:
        e = self.procs.get(serial)
        if e is None or e.exiting:
            return None
        if e.pidfd >= 0 and _exited(e.pid.os_pid):
            # Dead but not yet reaped: reap now, so that nobody who has seen
            # the death (a closed socket) can still find it alive or named.
            self.reap(e)
            return None
        return e

    # ---- output to processes ----------------------------------------------

    def post(self, e: Entry, data: bytes, fd: int | None = None) -> None:
        """Queue a frame for ``e``'s inbound stream without ever blocking."""
        if e.backlog:
            e.backlog.append((data, fd))  # type: ignore[union-attr]
            return
        if self._try_send(e, data, fd):
            return
        e.backlog = deque([(data, fd)])
        try:
            self.ep.register(e.write.fileno(), select.EPOLLOUT)
            self.by_fd[e.write.fileno()] = ("write", e)
        except FileExistsError:
            pass

    def _try_send(self, e: Entry, data: bytes, fd: int | None) -> bool:
        try:
            if fd is None:
                e.write.send(data, socket.MSG_DONTWAIT)
            else:
                # not socket.send_fds: it ignores its flags, and a blocking
                # send to a stopped or stuck requester would stall the node
                e.write.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [fd]))], socket.MSG_DONTWAIT)
                self._drop(fd)
            return True
        except BlockingIOError:
            return False
        except OSError:  # the receiver is gone; its death is on its way
            if fd is not None:
                self._drop(fd)
            return True

    def _drop(self, fd: int) -> None:
        self.held.discard(fd)
        os.close(fd)

    def _flush(self, e: Entry) -> None:
        while e.backlog:
            data, fd = e.backlog[0]
            if not self._try_send(e, data, fd):
                return
            e.backlog.popleft()  # type: ignore[union-attr]
        e.backlog = ()
        self.ep.unregister(e.write.fileno())
        del self.by_fd[e.write.fileno()]

    def notify(self, e: Entry, term: tuple) -> None:
        self.post(e, _ctrl_frame(term))

    # ---- the loop -----------------------------------------------------------

    def run(self) -> None:
        while self.running:
            timers = self.timers
            while timers and timers[0][2] not in self.timer_data:
                heapq.heappop(timers)  # cancelled: never wake up for it
            timeout = -1.0
            if timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            if self.sweep_at is not None:
                until_sweep = max(0.0, self.sweep_at - time.monotonic())
                timeout = until_sweep if timeout < 0 else min(timeout, until_sweep)
            try:
                if self.spare_wanted and timeout != 0 and not self.ep.poll(0):
                    self._new_spare()  # nothing to do: fork the next spawn's process now
                    continue
                events = self.ep.poll(timeout)
            except InterruptedError:
                continue
            for fd, _mask in events:
                what, e = self.by_fd.get(fd, (None, None))
                if what == "ctrl":
                    self.read_requests(e)
                elif what == "pidfd":
                    # (_exited: an event of this batch may be stale, its fd closed
                    # and reused by a later spawn's pidfd: reap never waits)
                    if e.pid.serial in self.procs and _exited(e.pid.os_pid):
                        self.reap(e)
                elif what == "write":
                    self._flush(e)
                elif what == "observe":
                    self.publish()
                elif what == "spare":
                    if self.spare is not None and _exited(self.spare.os_pid):
                        # killed by someone: reaped now, replaced at the next spawn
                        # (not at once: a spare that dies as it starts would loop)
                        self._retire_spare(replace=False)
            if self.timers:
                self.fire_timers()
            if self.sweep_at is not None and time.monotonic() >= self.sweep_at:
                self.sweep()

    def read_requests(self, e: Entry) -> None:
        while True:
            try:
                more = e.reader.read(e.ctrl, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                more = False
            for _kind, body in e.reader.frames():
                req_id, op, args = pickle.loads(body)
                try:
                    result = self.ops[op](e, *args)
                except Exception as exc:  # a bug here must not take the node down
                    result = ("error", f"{type(exc).__name__}: {exc}")
                fd = result[1] if type(result) is tuple and result[:1] == ("$fd",) else None
                if not (req_id and e.pid.serial in self.procs):
                    if fd is not None:
                        self._drop(fd)  # nobody left to hand it to
                elif fd is not None:
                    self.post(e, _ctrl_frame(("reply", req_id, "$fd"), wire.CTRL | wire.HAS_FD), fd)
                else:
                    self.post(e, _ctrl_frame(("reply", req_id, result)))
                if not self.running:
                    return
            if not more:
                # The process closed its control socket: it is exiting.
                self.ep.unregister(e.ctrl.fileno())
                self.by_fd.pop(e.ctrl.fileno(), None)
                if e.is_main:
                    self.teardown()
                break

    # ---- deaths -------------------------------------------------------------

    def kill(self, e: Entry, reason: tuple[str, bytes], summary: str) -> None:
        """Make ``e`` exit with ``reason`` (``summary``: the same as text), busy or not."""
        if e.exiting:
            return
        if e.is_main:
            # The program's own process is never killed by a signal from its
            # children; it is told, and raises ProcessExit at its next otpy call.
            self.notify(e, ("exit", None, reason[1], True))
            return
        if e.last_words is None:
            e.pending = reason
            e.summary = summary
        e.exiting = True
        self._release_name(e)
        _kill_group(e.pid.os_pid)

    def reap(self, e: Entry) -> None:
        if e.ctrl.fileno() in self.by_fd:
            self.read_requests(e)  # its last words, if it had time to say them
        try:
            _, status = os.waitpid(e.pid.os_pid, 0)
        except ChildProcessError:
            status = 0
        reason = e.pending or e.last_words
        if reason is None:
            term = reasons.from_wait_status(status)
            reason, e.summary = reasons.constant(term), reasons.describe(term)
        self.died(e, reason)

    def died(self, e: Entry, reason: tuple[str, bytes]) -> None:
        serial = e.pid.serial
        del self.procs[serial]
        summary = e.summary or "?"
        self._release_name(e)
        self.status.release(serial)
        cls, body = reason
        self.tombstones[serial] = body
        if len(self.tombstones) > TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]
        # The order (watchers, links, monitors) and why: see tables.py.
        for notice in tables.death(self.procs, e, cls, body):
            target = self.procs[notice.serial]
            if type(notice) is tables.Kill:
                self.kill(target, reason, summary)
            else:
                self.notify(target, notice.term)
        self._record_exit(e, summary)  # after the notices: off the path to a restart
        self._close(e)
        # What it started and left running ends with it: its process group at
        # once; what left the group was handed to us (a subreaper): see sweep.
        _kill_group(e.pid.os_pid, leader_alive=False)
        if self.sweep_at is None:
            self.sweep_at = time.monotonic()

    def _close(self, e: Entry) -> None:
        for fd in (e.ctrl.fileno(), e.pidfd, e.write.fileno()):
            if fd in self.by_fd:
                try:
                    self.ep.unregister(fd)
                except OSError:
                    pass
                del self.by_fd[fd]
        for _data, fd in e.backlog:
            if fd is not None:
                self._drop(fd)
        self.held.discard(e.ctrl.fileno())
        self.held.discard(e.write.fileno())
        self.os_pids.discard(e.pid.os_pid)
        e.ctrl.close()
        e.write.close()
        e.reader.close()
        if e.pidfd >= 0:
            self._drop(e.pidfd)

    def _release_name(self, e: Entry) -> None:
        if e.name is not None:
            del self.names[(e.name_ns, e.name)]
            e.name = None
            self.status.bump_generation()

    def teardown(self) -> None:
        """The node is shutting down (or the program is gone): kill every
        process with its group and reap them. What they left behind is the
        keeper's to sweep once the zygote has exited (keeper.py)."""
        self.running = False
        self._retire_spare()
        for e in list(self.procs.values()):
            if not e.is_main:
                _kill_group(e.pid.os_pid)
        for e in list(self.procs.values()):
            if not e.is_main:
                try:
                    os.waitpid(e.pid.os_pid, 0)
                except ChildProcessError:
                    pass

    def sweep(self) -> bool:
        """Kill and reap the leftovers of dead processes: the children of
        this zygote that are not otpy processes. The zygote is a child
        subreaper, so whatever an otpy process started is handed to it when
        that process dies (or when the leftover's own parent dies), however
        it left the process group. A leftover still in the group of a live
        process is kept: it ends with that process. Schedules the next sweep;
        True if any leftover remains."""
        self.sweep_at = None
        killed = kept = False
        waiting = self.spare.os_pid if self.spare is not None else None
        for os_pid in children():
            if os_pid in self.os_pids or os_pid == waiting:
                continue
            try:
                if os.waitpid(os_pid, os.WNOHANG)[0]:
                    continue  # it had exited: reaped now
                group = os.getpgid(os_pid)
            except (ChildProcessError, ProcessLookupError):
                continue
            if group in self.os_pids:
                kept = True
                continue
            try:
                os.kill(os_pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        if killed or kept:
            self.sweep_at = time.monotonic() + (SWEEP_AGAIN if killed else SWEEP_IDLE)
        return killed or kept

    # ---- spawning -----------------------------------------------------------

    def op_spawn(self, e: Entry, kind: int, payload: bytes, link: bool, mref: Ref | None,
                 ns: str, name: str | None = None) -> Pid | tuple[str, Any]:
        if name is not None:  # registered for the child as it is made: taken, nothing is
            owner = self.names.get((ns, name))
            if owner is not None and self.live(owner) is not None:
                return ("taken", self.procs[owner].pid)
        if kind == wire.MSG_DILL and not self.dill_loaded:
            wire.load_by_value()  # once, here: every later child inherits dill
            self.dill_loaded = True
            self._retire_spare()  # forked without it
        self.spare_wanted = True
        serial = self._alloc_serial()
        # Claimed before the child runs: one that reached its first receive
        # before the zygote's bookkeeping would have its "waiting" overwritten.
        self.status.claim(serial)
        made: Any  # (os pid, pidfd, inbound write end, control socket), an error, or None
        try:
            made = self._hand_to_spare(serial, ns, name, e, kind, payload)
            if made is None:
                made = self._fork_child(serial, ns, name, e, kind, payload)
                if made[0] == "error" and self.spare is not None:
                    self._retire_spare()  # at a system limit the idle spare held a slot
                    made = self._fork_child(serial, ns, name, e, kind, payload)
        except BaseException:
            self.status.release(serial)
            raise
        if made[0] == "error":
            self.status.release(serial)
            return made
        os_pid, pidfd, inbound_w, ctrl_zyg = made
        pid = Pid(self.node, serial, os_pid)
        child = Entry(pid, ns, e.pid, inbound_w, ctrl_zyg, pidfd, False, False)
        self._add(child)
        self.spawns += 1
        if name is not None:
            self._name(child, ns, name)
        log.logger().debug("process spawned", node=self.node, pid=serial, os_pid=os_pid,
                           parent=e.pid.serial, tree=ns or None)
        # Links and monitors exist before the child runs a single line, so a
        # child that dies at once is still reported (spawn_link is atomic).
        if link:
            tables.link(e, child)
        if mref is not None:
            tables.monitor(e, child, mref)
        return pid

    def _streams(self) -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
        """A new process's streams: (inbound read end, inbound write end,
        control child end, control zygote end). OSError at a system limit."""
        made: list[socket.socket] = []
        try:
            made += socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            made += socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            for sock in made:
                sock.close()
            raise
        made[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wire.SEND_BUFFER)
        inbound_r, inbound_w, ctrl_child, ctrl_zyg = made
        return inbound_r, inbound_w, ctrl_child, ctrl_zyg

    def _hand_to_spare(self, serial: int, ns: str, name: str | None, e: Entry, kind: int,
                       payload: bytes) -> tuple[int, int, socket.socket, socket.socket] | None:
        """The spawn handed to the spare: (os pid, pidfd, inbound write end,
        control socket); None if there is no spare, the body is too big for
        it, or it is gone (then retired)."""
        waiting = self.spare
        if waiting is None:
            return None
        order = waiting.order(Pid(self.node, serial, waiting.os_pid), ns, name, e.pid, kind,
                              payload)
        if order is None:
            return None
        try:
            # The spawner's inbound stream, for the child to keep (see _fork_child).
            to_parent = os.dup(e.write.fileno())
        except OSError:
            return None
        try:
            handed = waiting.hand(order, to_parent)
        finally:
            os.close(to_parent)
        if not handed:
            self._retire_spare()
            return None
        self.spare = None
        self._unwatch_spare(waiting)
        self.held.discard(waiting.sock.fileno())
        waiting.sock.close()
        return waiting.os_pid, waiting.pidfd, waiting.inbound, waiting.ctrl

    def _fork_child(self, serial: int, ns: str, name: str | None, e: Entry, kind: int,
                    payload: bytes) -> tuple[int, int, socket.socket, socket.socket] \
            | tuple[str, str]:
        """The spawn forked: (os pid, pidfd, inbound write end, control
        socket), or an error naming the limit that stopped it."""
        try:
            streams = self._streams()
        except OSError as exc:
            return ("error", limit_message(exc, len(self.procs)))
        inbound_r, inbound_w, ctrl_child, ctrl_zyg = streams
        fds: list[int] = []
        try:
            # The pidfd's slot, taken now: once the child runs, nothing may fail.
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            # The spawner's inbound stream, for the child to keep (not in held):
            # most children's first message goes to their spawner (a GenServer's
            # start ack, a result), and this spares them asking for it ("open").
            fds.append(os.dup(e.write.fileno()))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            for sock in streams:
                sock.close()
            return ("error", limit_message(exc, len(self.procs)))
        slot, to_parent = fds
        self.held.add(slot)  # the child closes it with the rest
        # Frozen objects are never scanned by the child's collector, so the
        # child does not copy the pages of the zygote's tables it inherits.
        gc.freeze()
        try:
            os_pid = os.fork()
        except OSError as exc:
            gc.unfreeze()
            os.close(to_parent)
            self._drop(slot)
            for sock in streams:
                sock.close()
            return ("error", limit_message(exc, len(self.procs)))
        if os_pid == 0:
            # The child keeps the zygote's ends of its streams too (they are not
            # in held yet): so the zygote's exit wakes none of its processes
            # with an end of file. They die of their parent-death signal
            # instead; 1,000 woken to read EOF kept the exit busy for 1 s.
            self._child(Pid(self.node, serial, os.getpid()), ns, name, e.pid, kind, payload,
                        [inbound_r.fileno(), ctrl_child.fileno(), to_parent])
        gc.unfreeze()
        _own_group(os_pid)  # here too, so that no kill can come before the child's own
        os.close(to_parent)
        inbound_r.close()
        ctrl_child.close()
        self._drop(slot)
        return os_pid, os.pidfd_open(os_pid), inbound_w, ctrl_zyg

    def _prepare_child(self) -> None:
        """In a new child (or spare), before anything else runs. As little as
        possible runs here: every page it writes is a copy the child makes of
        the zygote's. Its name (otpy-<node>), SIGINT ignored and SIGCHLD's
        default action are inherited from the zygote."""
        die_with_parent(self.os_pid)
        _own_group(0)  # before any line of the body: all it starts is in the group
        signal.set_wakeup_fd(-1)
        signal.signal(REQUEST_SIGNAL, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.page.close()
        self.ep.close()
        # The other processes' descriptors, closed by number: going through
        # the entries would cost a copy of every page they live on, in
        # every child (3-9 ms per spawn at 1,000 live processes). Their
        # socket objects keep stale numbers but are never freed here: this
        # frame holds the zygote until os._exit.
        self.held.close_all()
        self.status.close_fd()

    def _child(self, pid: Pid, ns: str, name: str | None, parent: Pid, kind: int,
               payload: bytes, fds: list[int]) -> None:
        """A child forked for a spawn: never returns."""
        code = 1
        try:
            self._prepare_child()
            code = self._run_child((pid, ns, name, parent, kind, payload), fds)
        finally:
            os._exit(code)

    def _run_child(self, order: tuple, fds: list[int]) -> int:
        """Run a spawned process's body (``fds``: its inbound stream, its
        control socket, its spawner's inbound stream): its exit code."""
        pid, ns, name, parent, kind, payload = order
        inbound_fd, ctrl_fd, to_parent = fds
        inbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, inbound_fd)
        ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, ctrl_fd)
        return process.run_child(pid, ns, name, parent, inbound, ctrl, to_parent,
                                 self.status, self.os_pid, kind, payload)

    def _set_up_spare(self) -> None:
        """In a spare, as it is forked: set up as any child (named
        ``otpy-<node>`` as every process of the node, so that one is never
        seen under another name once spawned), then what a child does first
        is done once on throwaway objects, so that the pages it writes
        (reference counts, the allocator's) are copied now rather than while
        a spawner waits."""
        self._prepare_child()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        order = pickle.loads(pickle.dumps((self.main_pid, "", None, self.main_pid), 5))
        ctx = process.ProcessContext(order[0], "", order[3], a, b, self.status, self.os_pid,
                                     trap=False, is_main=False)
        kind, body = wire.encode_body((process.ProcessContext, (), {}))
        wire.decode(kind, body)
        del ctx
        a.close()
        b.close()

    def _new_spare(self) -> None:
        """Fork the process the next spawn is handed to (the zygote is idle)."""
        self.spare_wanted = False
        if self.spare is not None:
            return  # the last spawn did not take it (its body was too big)
        try:
            streams = self._streams()
        except OSError:
            return
        made = spare.fork(streams, self._set_up_spare, self._run_child)
        if made is None:
            return
        try:
            self.ep.register(made.pidfd, select.EPOLLIN)  # its death, if it is killed
        except OSError:  # out of memory or epoll watches: no spare
            spare.retire(made)
            return
        self.by_fd[made.pidfd] = ("spare", None)
        for fd in made.fds():
            self.held.add(fd)
        self.spare = made

    def _unwatch_spare(self, waiting: spare.Spare) -> None:
        self.ep.unregister(waiting.pidfd)
        del self.by_fd[waiting.pidfd]

    def _retire_spare(self, replace: bool = True) -> None:
        """Let the spare go (killed and reaped): it no longer matches what a
        child must inherit, it died, a fork needs its process slot, or the
        node ends. ``replace``: the next is forked when the zygote is idle
        again (else after the next spawn)."""
        waiting, self.spare = self.spare, None
        if waiting is None:
            return
        self._unwatch_spare(waiting)
        for fd in waiting.fds():
            self.held.discard(fd)
        spare.retire(waiting)
        self.spare_wanted = replace

    # ---- requests -----------------------------------------------------------

    def op_open(self, e: Entry, serial: int) -> Any:
        target = self.live(serial)
        if target is None:
            return None
        return self._stream_of(target)

    def _stream_of(self, target: Entry) -> Any:
        """A copy of ``target``'s inbound write end, for the requester."""
        try:
            fd = os.dup(target.write.fileno())
        except OSError as exc:
            return ("error", limit_message(exc, len(self.procs)))
        self.held.add(fd)
        return ("$fd", fd)

    def op_link(self, e: Entry, serial: int) -> bool:
        target = self.live(serial)
        if target is None:
            return False
        tables.link(e, target)
        return True

    def op_unlink(self, e: Entry, serial: int) -> None:
        tables.unlink(self.procs, e, serial)

    def op_monitor(self, e: Entry, ref: Ref, target: Pid | str, ns: str) -> Pid | None:
        t = self._target(target, ns)
        if t is None:
            self.notify(e, ("down", ref, target, _NOPROC))
            return None
        tables.monitor(e, t, ref)
        return t.pid

    def _target(self, target: Pid | str, ns: str) -> Entry | None:
        if isinstance(target, str):
            serial = self.names.get((ns, target))
            return None if serial is None else self.live(serial)
        if target.node != self.node:
            return None
        return self.live(target.serial)

    def op_demonitor(self, e: Entry, ref: Ref) -> bool:
        return tables.demonitor(self.procs, e, ref)

    def op_watch(self, e: Entry, serial: int, with_stream: bool = False) -> Any:
        """Ask to be told ("dead") when ``serial`` dies; its reason if it
        already has; else, ``with_stream``, its inbound stream (as "open")."""
        t = self.live(serial)
        if t is None:
            return self.tombstones.get(serial, _NOPROC)
        tables.watch(e, t)
        return self._stream_of(t) if with_stream else None

    def op_trap(self, e: Entry, flag: bool) -> bool:
        previous, e.trap = e.trap, bool(flag)
        return previous

    def op_exit(self, e: Entry, serial: int, cls: str, body: bytes, summary: str) -> None:
        t = self.live(serial)
        if t is None:
            return
        if cls == reasons.KILL:
            self.kill(t, _KILLED, "killed")
        elif t.trap:
            self.notify(t, ("exit", e.pid, body, False))
        elif cls == reasons.NORMAL:
            if t is e:
                self.kill(t, (cls, body), summary)
        else:
            self.kill(t, (cls, body), summary)

    def op_kill(self, e: Entry, serial: int, cls: str, body: bytes, summary: str) -> None:
        """lowlevel.kill: SIGKILL, trapping or not, with ``(cls, body)`` as the reason."""
        t = self.live(serial)
        if t is not None:
            self.kill(t, (cls, body), summary)

    def op_register(self, e: Entry, ns: str, name: str, serial: int) -> Any:
        owner = self.names.get((ns, name))
        if owner is not None and self.live(owner) is not None:
            return ("taken", self.procs[owner].pid)
        t = self.live(serial)
        if t is None:
            return ("noproc", None)
        if t.name is not None:
            return ("named", t.name)
        self._name(t, ns, name)
        return ("ok", None)

    def _name(self, t: Entry, ns: str, name: str) -> None:
        t.name = t.last_name = name
        t.name_ns = ns
        self.names[(ns, name)] = t.pid.serial
        self.status.bump_generation()

    def op_unregister(self, e: Entry, ns: str, name: str) -> bool:
        serial = self.names.get((ns, name))
        if serial is None:
            return False
        self._release_name(self.procs[serial])
        return True

    def op_whereis(self, e: Entry, ns: str, name: str) -> Pid | None:
        serial = self.names.get((ns, name))
        if serial is None:
            return None
        t = self.live(serial)
        return None if t is None else t.pid

    def op_registered(self, e: Entry, ns: str) -> list[str]:
        return sorted(name for (n, name), serial in list(self.names.items())
                      if n == ns and self.live(serial) is not None)

    def op_is_alive(self, e: Entry, serial: int) -> bool:
        return self.live(serial) is not None

    def op_processes(self, e: Entry, ns: str | None) -> list[Pid]:
        return [p.pid for p in list(self.procs.values())
                if self.live(p.pid.serial) is not None and (ns is None or p.ns == ns)]

    def op_info(self, e: Entry, serial: int) -> ProcessRow[Pid] | None:
        t = self.live(serial)
        if t is None:
            return None
        row: ProcessRow[Pid] = self.row(t, lambda pid: pid)
        row["memory"] = _rss(t.pid.os_pid)
        return row

    def row(self, t: Entry, name_of: Callable[[Pid], P]) -> ProcessRow[P]:
        """``t`` as the schema of rows.py, naming processes by ``name_of(pid)``."""
        state, qlen = self.status.get(t.pid.serial) or (0, 0)

        def named(serials: Iterable[int]) -> list[P]:
            return [name_of(self.procs[s].pid) for s in sorted(serials) if s in self.procs]

        return {
            "pid": name_of(t.pid),
            "name": t.name,
            "namespace": t.ns,
            "os_pid": t.pid.os_pid,
            "parent": name_of(t.parent) if t.parent is not None else None,
            "status": STATE_NAMES.get(state, "unknown"),
            "trap_exit": t.trap,
            "links": named(t.links),
            "monitors": named(t.monitoring.values()),
            "monitored_by": named(t.monitors.values()),
            "message_queue_len": qlen,
            "inbound_bytes": _unread_bytes(t.write),
            "started_at": t.started_at,
        }

    def op_timer(self, e: Entry, ref: Ref, dest: Any, ns: str, delay: float, kind: int,
                 body: bytes) -> None:
        when = time.monotonic() + max(0.0, delay)
        self.timer_data[ref] = (when, dest, ns, kind, body)
        heapq.heappush(self.timers, (when, next(self.timer_seq), ref))

    def op_cancel_timer(self, e: Entry, ref: Ref) -> float | None:
        data = self.timer_data.pop(ref, None)
        if data is None:
            return None
        return max(0.0, data[0] - time.monotonic())

    def fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, ref = heapq.heappop(self.timers)
            data = self.timer_data.pop(ref, None)
            if data is None:
                continue  # cancelled
            _, dest, ns, kind, body = data
            t = self._target(dest, ns)
            if t is not None:
                self.post(t, wire.HEADER.pack(len(body), kind) + body)

    def op_last_words(self, e: Entry, cls: str, body: bytes, summary: str) -> None:
        e.last_words = (cls, body)
        e.summary = summary

    def op_annotate(self, e: Entry, serial: int, fields: dict) -> None:
        t = self.procs.get(serial)
        if t is not None:
            t.meta.update(fields)

    def op_tally(self, e: Entry, event: str, detail: str | None) -> None:
        # Labelled now, by what the process is called: a restarted supervisor
        # gets a new pid but keeps its name or child id, so its counts go on.
        key = (event, process_label(e.name, e.is_main, e.meta.get("child_id"),
                                    e.meta.get("behaviour")), detail)
        self.tallies[key] = self.tallies.get(key, 0) + 1

    def op_log_config(self, e: Entry, json_lines: bool, level: int, path: str | None) -> None:
        log.apply(json_lines, level, path)
        self._retire_spare()  # children inherit the configuration

    # ---- observation ----------------------------------------------------------

    def _record_exit(self, e: Entry, summary: str) -> None:
        """Keep the death for observers, and log it."""
        exit_record = {"pid": e.pid.serial, "os_pid": e.pid.os_pid, "name": e.last_name,
                       "namespace": e.ns, "reason": summary, "at": time.time(),
                       "child_id": e.meta.get("child_id"), "supervisor": e.meta.get("supervisor")}
        self.recent_exits.append(exit_record)
        self.exits[reasons.exit_class(summary)] += 1
        # debug: one per process is too many for the default level; a
        # supervised child's abnormal exit gets a crash report (error) anyway
        log.logger().debug("process exited", node=self.node, pid=e.pid.serial,
                           os_pid=e.pid.os_pid, name=e.last_name, tree=e.ns or None,
                           reason=summary)

    def publish(self) -> None:
        """An observer asked: write the tables to the page."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        procs: list[PageRow] = []
        for e in self.procs.values():
            row: PageRow = {**self.row(e, _serial), "program": e.is_main, "exiting": e.exiting,
                            "meta": e.meta}
            procs.append(row)
        page = {"node": self.node, "zygote_os_pid": self.os_pid,
                "program_os_pid": self.main_pid.os_pid, "started_at": self.started_at,
                "written_at": time.time(),
                "processes": procs, "recent_exits": list(self.recent_exits),
                "counts": {"spawns": self.spawns, "exits": self.exits,
                           "tallies": [[*key, n] for key, n in self.tallies.items()]}}
        self.page.write(json.dumps(page, default=repr).encode())

    def op_shutdown(self, e: Entry) -> None:
        self.teardown()


def _serial(pid: Pid) -> int:
    return pid.serial


class _FdSet:
    """A set of descriptors as one byte per fd number.

    A forked child closes them all by reading this one buffer: iterating a
    set of ints would write to every int object's page (reference counts),
    and so copy those pages, in every child.
    """

    __slots__ = ("flags",)

    def __init__(self) -> None:
        self.flags = bytearray(1024)

    def add(self, fd: int) -> None:
        if fd >= len(self.flags):
            self.flags.extend(bytes(max(fd + 1, 2 * len(self.flags)) - len(self.flags)))
        self.flags[fd] = 1

    def discard(self, fd: int) -> None:
        if 0 <= fd < len(self.flags):
            self.flags[fd] = 0

    def __contains__(self, fd: int) -> bool:
        return 0 <= fd < len(self.flags) and self.flags[fd] == 1

    def close_all(self) -> None:
        """Close every fd in the set, one syscall per run of consecutive numbers."""
        flags = self.flags
        start = flags.find(1)
        while start >= 0:
            end = flags.find(0, start)
            if end < 0:
                end = len(flags)
            os.closerange(start, end)
            start = flags.find(1, end)


def raise_fd_limit() -> None:
    """Raise this process's soft open-file limit to its hard limit.

    The zygote holds about three descriptors per live process, and the
    program one per process it talks to: a soft limit of 1,024 (or a
    ``ulimit -n 256``) would stop a node at a few hundred processes, while
    the hard limit is usually far higher.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def limit_message(exc: OSError, live: int) -> str:
    """Why a spawn failed, naming the system limit that was hit and how to raise it."""
    if exc.errno == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"cannot spawn: the open-file limit is reached (RLIMIT_NOFILE soft={soft}, "
                f"hard={hard}; the zygote holds about 3 descriptors per process, 4 for "
                f"its spare, and has "
                f"{live} processes). Raise the hard limit before starting the program, "
                f"e.g. `ulimit -n 65536` in its shell or LimitNOFILE= in its systemd unit")
    if exc.errno == errno.ENFILE:
        return ("cannot spawn: the system-wide open-file table is full; raise the "
                "sysctl fs.file-max")
    if exc.errno == errno.EAGAIN:
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        limits = [f"the per-user process limit RLIMIT_NPROC (soft={_limit(soft)}, "
                  f"hard={_limit(hard)}; `ulimit -u`, ignored for root)",
                  f"kernel.pid_max={_read('/proc/sys/kernel/pid_max')}",
                  f"kernel.threads-max={_read('/proc/sys/kernel/threads-max')}"]
        cgroup = _pids_cgroup()
        if cgroup is not None:
            limits.append(f"the pids cgroup {cgroup} (pids.max={_read(cgroup + '/pids.max')}, "
                          f"pids.current={_read(cgroup + '/pids.current')}; "
                          f"TasksMax= in a systemd unit, --pids-limit for a container)")
        return (f"cannot spawn: the system refused to create a process (EAGAIN) with {live} "
                f"processes in this node: a process limit is reached. The limits: "
                + "; ".join(limits))
    if exc.errno == errno.ENOMEM:
        return f"cannot spawn: out of memory creating a process ({live} processes in this node)"
    return f"cannot spawn: {exc}"


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _pids_cgroup() -> str | None:
    """The directory of this process's pids cgroup (v1 or v2), if it has a limit file."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for base in ((f"/sys/fs/cgroup/pids{path}",) if "pids" in controllers.split(",")
                     else (f"/sys/fs/cgroup{path}",) if controllers == "" else ()):
            if os.path.exists(base + "/pids.max"):
                return base.rstrip("/")
    return None


def _exited(os_pid: int) -> bool:
    """Has this child exited (not reaped yet)? Unlike select() on its pidfd,
    this works for any fd number (select() stops at 1,024: ~340 processes)."""
    try:
        return os.waitid(os.P_PID, os_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _own_group(os_pid: int) -> None:
    """Make a process the leader of a process group of its own (the zygote
    and the child both ask, as shells do: whichever runs first wins)."""
    try:
        os.setpgid(os_pid, os_pid)
    except OSError:  # the child got there first and exec'd, or it is gone
        pass


def _kill_group(os_pid: int, leader_alive: bool = True) -> None:
    """SIGKILL a process and everything in its process group. After the
    leader was reaped (``leader_alive=False``) only the group is signalled:
    its pid may already belong to someone else, its group id cannot."""
    try:
        os.killpg(os_pid, signal.SIGKILL)
    except ProcessLookupError:  # not (yet) a group leader, or its group is empty
        if leader_alive:
            try:
                os.kill(os_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _ctrl_frame(term: tuple, kind: int = wire.CTRL) -> bytes:
    body = pickle.dumps(term, 5)
    return wire.HEADER.pack(len(body), kind) + body


_NOPROC = reasons.constant("noproc")[1]
_KILLED = reasons.constant("killed")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(os_pid: int) -> int:
    try:
        with open(f"/proc/{os_pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_SIOCOUTQ = 0x5411


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes written to a process's inbound stream and not read yet."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def serve(node: str, status: StatusTable, main_pid: Pid, main_write: socket.socket,
          main_ctrl: socket.socket, keeper_os_pid: int) -> None:
    """Body of the zygote process (forked by the node's keeper, keeper.py)."""
    os.setpgid(0, 0)  # its own process group, as every otpy process has
    # It dies with the keeper; when it dies, so does every otpy process, at
    # once (their own PR_SET_PDEATHSIG): that is how the keeper ends a node
    # whose program is gone.
    die_with_parent(keeper_os_pid)
    # Whatever an otpy process leaves behind is handed to the zygote when that
    # process dies (see Zygote.sweep).
    subreaper()
    # Ctrl-C is the program's to handle; SIGCHLD as the OS has it (a handler
    # inherited from the program must not run here). Every child inherits both.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prctl_name(f"otpy-{node}")  # and the name, which a fork keeps
    raise_fd_limit()
    zygote = Zygote(node, status, main_pid, main_write, main_ctrl)
    try:
        zygote.run()
    except BaseException:
        zygote.teardown()
        raise
