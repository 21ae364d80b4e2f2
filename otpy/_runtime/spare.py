"""The zygote's spare: one process forked ahead of need, so that a spawn
hands it a body instead of forking while the spawner waits.

Why: a fork of the zygote costs ~0.7 ms (its page tables are copied), and
the new child's set-up (its parent-death signal, its own process group,
closing the descriptors of every other process) more; a spawn, or a
supervisor's restart, waited for all of it. The zygote now forks the next
spare when it has nothing else to do, and a spawn sends the spare what the
child would have inherited at its fork: its serial, namespace, name,
spawner and body, and its spawner's stream (SCM_RIGHTS over a SOCK_SEQPACKET
pair); its own streams were made with it.

A spare is the zygote as it was when the spare was forked, so the zygote
retires it (kills and reaps it) whenever something children inherit changes
after that: the logging configuration, dill being loaded. It also retires
it when a fork fails at a system limit (the idle spare holds a process
slot) and tries once more; a spare that died (SIGKILLed by someone) is
reaped as soon as its pidfd says so. Until it is handed a body, a spare is
no otpy process: no pid, no slot, not in ``processes()``; it dies with the
zygote (its parent-death signal) and is killed at the node's teardown.
"""

from __future__ import annotations

import array
import gc
import os
import pickle
import signal
import socket
from typing import Any, Callable

from . import wire

# A body bigger than this is forked as before: the order must fit one
# datagram of the socket pair (its send buffer is ~200 KiB by default).
MAX_ORDER = 64 * 1024
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)  # the spawner's stream


class Spare:
    """The zygote's handle on a spare: its OS pid and pidfd, the socket its
    order is sent on (and the biggest order it takes), and the zygote's ends
    of its future streams (its inbound stream's write end, its control
    socket)."""

    __slots__ = ("os_pid", "pidfd", "sock", "max_order", "inbound", "ctrl")

    def __init__(self, os_pid: int, pidfd: int, sock: socket.socket,
                 inbound: socket.socket, ctrl: socket.socket) -> None:
        self.os_pid, self.pidfd, self.sock = os_pid, pidfd, sock
        self.inbound, self.ctrl = inbound, ctrl
        # one datagram: within the socket's send buffer, whatever the system's
        self.max_order = min(MAX_ORDER,
                             sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 1024)

    def fds(self) -> tuple[int, int, int, int]:
        """The descriptors the zygote holds for it (none of them a child's)."""
        return self.sock.fileno(), self.pidfd, self.inbound.fileno(), self.ctrl.fileno()

    def order(self, pid: Any, ns: str, name: str | None, parent: Any, kind: int,
              payload: bytes) -> bytes | None:
        """What this spare is handed for a spawn, encoded; None if the body is
        too big for it (the spawn forks instead; the spare waits for the next)."""
        if len(payload) > self.max_order:  # before pickling: never a copy of a big body
            return None
        data = pickle.dumps((pid, ns, name, parent, kind, payload), 5)
        return data if len(data) <= self.max_order else None

    def hand(self, order: bytes, to_parent: int) -> bool:
        """Send the spare its ``order`` and its spawner's stream; False if the
        spare is gone: the caller forks instead, and retires this one."""
        try:
            self.sock.sendmsg([order], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", [to_parent]))], socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True


def fork(streams: tuple[socket.socket, ...], set_up: Callable[[], None],
         run: Callable[[tuple, list[int]], int]) -> Spare | None:
    """Fork a spare (in the zygote) with its streams made, as a forked
    child has them: ``streams`` are (inbound read end, inbound write end,
    control child end, control zygote end). ``set_up()`` runs in the spare
    at once; ``run(order, [inbound, control, spawner's stream])`` once a
    body is handed to it. None if the fork failed (out of processes or
    descriptors): spawns fork as before, and ``streams`` are closed."""
    inbound_r, inbound_w, ctrl_child, ctrl_zyg = streams
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        for sock in streams:
            sock.close()
        return None
    gc.freeze()  # as for any child: its collector never scans the zygote's tables
    try:
        os_pid = os.fork()
    except OSError:
        gc.unfreeze()
        for sock in (ours, theirs, *streams):
            sock.close()
        return None
    if os_pid == 0:
        code = 1
        try:
            set_up()
            # The zygote's ends of its streams stay open here too, as in a
            # forked child (see Zygote._fork_child).
            os.close(ours.detach())
            handed = _await_order(theirs)
            if handed is not None:
                order, to_parent = handed
                code = run(order, [inbound_r.detach(), ctrl_child.detach(), to_parent])
            else:
                code = 0
        finally:
            os._exit(code)
    gc.unfreeze()
    for sock in (theirs, inbound_r, ctrl_child):
        sock.close()
    try:
        os.setpgid(os_pid, os_pid)  # as the spare does itself: whichever runs first
    except OSError:
        pass
    try:
        pidfd = os.pidfd_open(os_pid)
    except OSError:  # out of descriptors: no spare, and none left behind
        for sock in (ours, inbound_w, ctrl_zyg):
            sock.close()
        os.kill(os_pid, signal.SIGKILL)
        os.waitpid(os_pid, 0)
        return None
    return Spare(os_pid, pidfd, ours, inbound_w, ctrl_zyg)


def retire(spare: Spare) -> None:
    """Let a spare go (in the zygote): killed and reaped at once (it waits
    idle, so that is quick), so that its process slot is free for the fork
    that may follow; its descriptors closed."""
    try:
        os.kill(spare.os_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(spare.os_pid, 0)
    except ChildProcessError:
        pass
    for sock in (spare.sock, spare.inbound, spare.ctrl):
        sock.close()
    os.close(spare.pidfd)


def _await_order(sock: socket.socket) -> tuple[tuple, int] | None:
    """In the spare: the body the zygote hands it, with its spawner's
    stream; None when the zygote let it go."""
    data, ancillary, _flags, _address = sock.recvmsg(MAX_ORDER, _FD_SPACE,
                                                     socket.MSG_CMSG_CLOEXEC)
    sock.close()
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    order: Any = pickle.loads(data)
    return order, wire.above_stdio(fds[0])
