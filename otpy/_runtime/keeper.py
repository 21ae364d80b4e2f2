"""The keeper: the node's first process, the zygote's parent, and the last
one out when the program dies.

Why a process of its own: when the program is SIGKILLed, two things must
happen at once and the zygote cannot do both. Every otpy process must stop
running code at once, which the kernel does best: each has
PR_SET_PDEATHSIG(SIGKILL) on the zygote, so killing the zygote signals them
all in one pass of the kernel's exit path. (The zygote killing thousands of
processes one syscall at a time is slow: each one it kills becomes runnable
and competes with it for the CPU; measured, 2,000-3,000 of 5,000 were not
even signalled 1 s after the program's SIGKILL.) And what those processes
started (subprocesses, forks, their children, whatever left the process
group) must die too, which needs a process that outlives them all and is
their ancestor: the keeper is a child subreaper above the zygote, so every
such leftover is handed to it as its parent dies, and it kills and reaps
them until none is left.

    program ──fork──► keeper (subreaper) ──fork──► zygote (subreaper) ──► otpy processes

The keeper is single-threaded and does nothing while the node runs: it waits
on the program's watch pipe and on the zygote's pidfd. When the program is
gone (EOF on the pipe) it SIGKILLs the zygote; when the zygote is gone (that
kill, the node's orderly shutdown, or any other death) it sweeps and exits.
While the node runs, the zygote (also a subreaper) cleans up after each
process that dies; see Zygote.sweep.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from typing import Any

from .terms import Pid

SWEEP_FOR = 2.0  # at most this long killing leftovers before the keeper exits
SWEEP_PAUSE = 0.005
ZYGOTE_PID = struct.Struct("q")  # how the keeper tells the program its zygote's pid


def run(node: str, status: Any, main_pid: Pid, main_write: socket.socket,
        main_ctrl: socket.socket, watch_fd: int, report_fd: int) -> None:
    """Body of the keeper (just forked from the program's process): fork the
    zygote, tell the program its pid on ``report_fd``, keep the node."""
    from . import zygote  # imported by the node's start already

    program_group = os.getpgid(0)
    os.setpgid(0, 0)  # out of the program's group: a terminal's signals are the program's
    zygote.subreaper()
    zygote.prctl_name(f"otpy-{node}")  # inherited by the zygote and every process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    me = os.getpid()
    zygote_os_pid = os.fork()
    if zygote_os_pid == 0:
        code = 1
        try:
            os.close(watch_fd)
            os.close(report_fd)
            zygote.serve(node, status, main_pid, main_write, main_ctrl, me)
            code = 0
        finally:
            os._exit(code)
    os.write(report_fd, ZYGOTE_PID.pack(zygote_os_pid))
    os.close(report_fd)
    main_write.close()
    main_ctrl.close()
    status.close()
    keep(zygote_os_pid, watch_fd, program_group)


def keep(zygote_os_pid: int, watch_fd: int, program_group: int) -> None:
    """The keeper's loop, until the zygote is gone and nothing is left."""
    zygote_fd = os.pidfd_open(zygote_os_pid)
    poller = select.poll()
    poller.register(watch_fd, select.POLLIN)
    poller.register(zygote_fd, select.POLLIN)
    while True:
        for fd, _events in poller.poll():
            if fd == watch_fd:  # the program is gone: its node goes with it, at once
                poller.unregister(watch_fd)
                try:
                    os.kill(zygote_os_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elif fd == zygote_fd:
                os.waitpid(zygote_os_pid, 0)
                sweep(program_group)
                return


def sweep(program_group: int) -> None:
    """Kill and reap every child of this process (each with its process
    group, unless that is the program's) until none is left, or ``SWEEP_FOR``
    seconds have passed. Once the zygote is gone every child of the keeper
    is a leftover: an otpy process (dying of its parent-death signal) or
    something one started."""
    deadline = time.monotonic() + SWEEP_FOR
    spare = {program_group, os.getpgid(0)}
    while True:
        found = children()
        if not found:
            return
        for os_pid in found:
            _kill_with_group(os_pid, spare)
        while True:  # reap what is dead; its own children are handed to us
            try:
                reaped, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not reaped:
                break
        if time.monotonic() >= deadline:
            return
        time.sleep(SWEEP_PAUSE)  # the keeper's own wait for the kernel: nothing else runs here


def _kill_with_group(os_pid: int, spare: set[int]) -> None:
    try:
        group = os.getpgid(os_pid)
    except ProcessLookupError:
        return
    if group not in spare:  # never the program's group (the shell's job) nor ours
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.kill(os_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children() -> list[int]:
    """The calling process's children, when it has one thread (the keeper,
    the zygote): that thread's list is the process's."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
