"""Starting and stopping a node: the program's process and its zygote.

The program's process becomes an otpy process at its first otpy call. At that
moment it forks the zygote (so the zygote, and every process it forks, starts
with the program's modules already imported) and keeps a pipe whose write end
only it holds: when the program dies, by any cause, the zygote sees EOF,
SIGKILLs every process of the node and exits. Each process also has
PR_SET_PDEATHSIG on the zygote, and the node is one process group.
"""

from __future__ import annotations

import atexit
import os
import secrets
import select
import signal
import socket
import threading

from . import process, wire, zygote
from .errors import RuntimeGone
from .status import StatusTable
from .terms import Pid

MAIN_SERIAL = 1
_start_lock = threading.Lock()
_zygote_os_pid: int | None = None
_watch_w: int | None = None


def context() -> process.ProcessContext:
    """The current process's runtime, starting the node on first use."""
    ctx = process.current
    if ctx is not None:
        return ctx
    with _start_lock:
        if process.current is None:
            _start()
    return process.current


def _start() -> None:
    global _zygote_os_pid, _watch_w
    node = secrets.token_hex(5)
    status = StatusTable.create()
    inbound_r, inbound_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbound_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wire.SEND_BUFFER)
    ctrl_main, ctrl_zyg = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    watch_r, watch_w = os.pipe()
    main_pid = Pid(node, MAIN_SERIAL, os.getpid())
    on_main_thread = threading.current_thread() is threading.main_thread()
    zpid = os.fork()
    if zpid == 0:
        code = 1
        try:
            inbound_r.close()
            ctrl_main.close()
            os.close(watch_w)
            zygote.serve(node, status, main_pid, inbound_w, ctrl_zyg, watch_r, on_main_thread)
            code = 0
        finally:
            os._exit(code)
    inbound_w.close()
    ctrl_zyg.close()
    os.close(watch_r)
    _zygote_os_pid = zpid
    _watch_w = watch_w
    process.current = process.ProcessContext(
        main_pid, "", None, inbound_r, ctrl_main, status, zpid, trap=True, is_main=True
    )


def shutdown(timeout: float = 5.0) -> None:
    """Stop the node: every process it started is killed and reaped."""
    global _zygote_os_pid, _watch_w
    ctx = process.current
    if ctx is None or not ctx.is_main or _zygote_os_pid is None:
        return
    zpid = _zygote_os_pid
    try:
        ctx.cast_ctrl("shutdown")
    except RuntimeGone:
        pass
    _wait_or_kill(zpid, timeout)
    process.current = None
    ctx.close()
    ctx.status.close_fd()
    if _watch_w is not None:
        os.close(_watch_w)
    _zygote_os_pid = _watch_w = None


def _wait_or_kill(os_pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(os_pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.killpg(os_pid, signal.SIGKILL)
        os.waitpid(os_pid, 0)
    except ChildProcessError:
        pass
    finally:
        os.close(fd)


def zygote_os_pid() -> int | None:
    return _zygote_os_pid


def _after_fork_in_child() -> None:
    """A fork otpy did not make (multiprocessing, say) must not act as its parent."""
    global _zygote_os_pid, _watch_w
    ctx = process.current
    process.current = None
    _zygote_os_pid = None
    if _watch_w is not None:
        try:
            os.close(_watch_w)  # else the zygote would not see the program die
        except OSError:
            pass
        _watch_w = None
    if ctx is not None:
        for sock in list(ctx.out.values()) + [ctx.inbound, ctx.ctrl]:
            try:
                sock.close()
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
