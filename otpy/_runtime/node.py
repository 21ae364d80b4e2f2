"""Starting and stopping a node: the program's process, its keeper and its zygote.

The program's process becomes an otpy process at its first otpy call. At that
moment it forks the node's keeper, which forks the zygote (so the zygote, and
every process it forks, starts with the program's modules already imported),
and keeps a pipe whose write end only it holds: when the program dies, by
any cause, the keeper sees EOF and SIGKILLs the zygote; every otpy process
dies with it at once (PR_SET_PDEATHSIG on the zygote), and the keeper kills
what they left behind (keeper.py).

When the program ends on its own terms (its last line, an uncaught
exception, Ctrl-C, SIGTERM) the node is stopped in order first, as OTP's
``init:stop()`` does: each process the program started, newest first, gets
the exit signal "shutdown" and is waited for (a supervisor then stops its
children in reverse order, each within its shutdown time, so trapping
workers run ``terminate``), all within one overall timeout
(``OTPY_SHUTDOWN_TIMEOUT``, 5 s by default); whatever remains is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any

from . import log, process, reasons, wire
from .errors import OtpyError, ProcessExit, RuntimeGone
from .status import StatusTable
from .terms import Down, Pid, Ref

MAIN_SERIAL = 1
SHUTDOWN_TIMEOUT = 5.0  # the orderly stop's overall bound (OTPY_SHUTDOWN_TIMEOUT)
KILL_TIMEOUT = 5.0  # then: how long the zygote gets to kill and reap the rest
_start_lock = threading.Lock()
_zygote_os_pid: int | None = None
_keeper_os_pid: int | None = None
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


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
        if value >= 0:
            return value
    except ValueError:
        pass
    print(f"otpy: ignoring {name}={text!r}: expected a number of seconds >= 0", file=sys.stderr)
    return default


def _on_sigterm(signum: int, frame: Any) -> None:
    # Unwind like Ctrl-C does, so that atexit stops the node in order.
    raise SystemExit(128 + signum)


def _fork_keeper() -> int:
    """os.fork(), without the warning Python 3.12+ gives in a threaded process."""
    with warnings.catch_warnings():
        # Python 3.12+ warns on every fork of a multi-threaded process: a lock
        # another thread holds at that instant stays locked in the child. The
        # node starts at the program's first otpy call, maybe after it started
        # threads (otpy.lowlevel.start() before them avoids the question). The
        # keeper forked here (and the zygote it forks) runs only the runtime,
        # which takes no lock a program thread could hold: its log lines are
        # single os.write calls, and the interpreter's own locks are reset by
        # CPython after a fork.
        # The filter is this call's only (the warning is still raised for any
        # other fork), though it is process-wide for the instant of the fork.
        warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
                                r"fork\(\) may lead to deadlocks", DeprecationWarning)
        return os.fork()


def _kill_and_reap(os_pid: int) -> None:
    """A keeper forked by a node start that failed after the fork (its
    zygote dies with it)."""
    os.kill(os_pid, signal.SIGKILL)
    os.waitpid(os_pid, 0)


def _fill_closed_stdio() -> None:
    """/dev/null on the standard descriptors a program was started without
    (``>&-``, some daemons), before the node opens anything. Else the node's
    first descriptors take those numbers in the program, and so in its keeper,
    its zygote and every process: a write meant for stdout (a C library's, a
    process's ``os.write(1, ...)``) landed in the status table every process
    maps, and the node handed out wrong pids after it. Not inherited by a
    program exec'd later (Python's default), which finds them closed as
    before."""
    for fd in (0, 1, 2):  # in order: each open below takes the lowest free number
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # another thread took the number first: not free either
                os.close(opened)


def _start() -> None:
    global _zygote_os_pid, _keeper_os_pid, _watch_w, SHUTDOWN_TIMEOUT
    from . import keeper, zygote  # the node's start needs them, importing otpy does not

    zygote.raise_fd_limit()  # the program holds a descriptor per process it talks to
    _fill_closed_stdio()
    # Configuration is read now, not at import: importing otpy does nothing.
    log.ensure_configured()
    process.on_trapped_exit = log.log_trapped_exit
    process.SEND_TIMEOUT = _seconds_from_env("OTPY_SEND_TIMEOUT", 60.0)
    SHUTDOWN_TIMEOUT = _seconds_from_env("OTPY_SHUTDOWN_TIMEOUT", 5.0)
    wire.note_main()  # what every process of this node can import from __main__
    node = os.urandom(5).hex()
    main_pid = Pid(node, MAIN_SERIAL, os.getpid())
    on_main_thread = threading.current_thread() is threading.main_thread()
    with contextlib.ExitStack() as undo:  # if the node cannot start, nothing is left open
        try:
            status = StatusTable.create()
            undo.callback(status.close)
            inbound_r, inbound_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            undo.callback(inbound_r.close)
            undo.callback(inbound_w.close)
            inbound_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wire.SEND_BUFFER)
            ctrl_main, ctrl_zyg = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            undo.callback(ctrl_main.close)
            undo.callback(ctrl_zyg.close)
            watch_r, watch_w = os.pipe()
            undo.callback(os.close, watch_r)
            undo.callback(os.close, watch_w)
            report_r, report_w = os.pipe()
            undo.callback(os.close, report_r)
        except OSError as exc:
            raise OtpyError(f"cannot start the otpy node: {exc}") from exc
        try:
            kpid = _fork_keeper()
        except OSError as exc:
            os.close(report_w)
            reason = zygote.limit_message(exc, 0).removeprefix("cannot spawn: ")
            raise OtpyError(f"cannot start the otpy node: {reason}") from exc
        if kpid == 0:
            code = 1
            try:
                inbound_r.close()
                ctrl_main.close()
                os.close(watch_w)
                os.close(report_r)
                keeper.run(node, status, main_pid, inbound_w, ctrl_zyg, watch_r, report_w)
                code = 0
            finally:
                os._exit(code)
        os.close(report_w)
        undo.callback(_kill_and_reap, kpid)  # runs first: a keeper this call could not use
        report = os.read(report_r, keeper.ZYGOTE_PID.size)
        if len(report) != keeper.ZYGOTE_PID.size:
            raise OtpyError("cannot start the otpy node: its keeper could not fork the zygote "
                            "(the system refused to create a process?)")
        (zpid,) = keeper.ZYGOTE_PID.unpack(report)
        ctx = process.ProcessContext(
            main_pid, "", None, inbound_r, ctrl_main, status, zpid, trap=True, is_main=True
        )
        undo.pop_all()
    inbound_w.close()
    ctrl_zyg.close()
    os.close(watch_r)
    os.close(report_r)
    _zygote_os_pid = zpid
    _keeper_os_pid = kpid
    _watch_w = watch_w
    process.current = ctx
    if on_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def shutdown(timeout: float | None = None) -> None:
    """Stop the node in order, within ``timeout`` seconds (default
    SHUTDOWN_TIMEOUT), then kill and reap whatever remains."""
    global _zygote_os_pid, _keeper_os_pid, _watch_w
    ctx = process.current
    if ctx is None or not ctx.is_main or _keeper_os_pid is None:
        return
    kpid = _keeper_os_pid
    if timeout is None:
        timeout = SHUTDOWN_TIMEOUT
    try:
        _stop_in_order(ctx, time.monotonic() + timeout)
    except (OtpyError, ProcessExit, OSError):
        pass  # best effort: what is left is killed below
    finally:
        try:
            ctx.cast_ctrl("shutdown")
        except RuntimeGone:
            pass
        _wait_or_kill(kpid, KILL_TIMEOUT)  # it exits once the zygote has, and swept
    process.current = None
    ctx.close()
    ctx.status.close_fd()
    if _watch_w is not None:
        os.close(_watch_w)
    _zygote_os_pid = _keeper_os_pid = _watch_w = None


def _stop_in_order(ctx: process.ProcessContext, deadline: float) -> None:
    """Send "shutdown" to each process the program started, newest first,
    and wait for it to be gone, until ``deadline``."""
    if ctx.gone:
        return
    top = []
    for pid in ctx.request("processes", None):
        if pid != ctx.pid:
            info = ctx.request("info", pid.serial)
            if info is not None and info["parent"] == ctx.pid:
                top.append(pid)
    cls, body = reasons.pack("shutdown", ctx.pid)
    mailbox = ctx.mailbox
    for pid in sorted(top, key=lambda p: p.serial, reverse=True):
        if time.monotonic() >= deadline:
            return
        ref = Ref.make(ctx.pid)
        if ctx.request("monitor", ref, pid, "") is None:
            continue  # already gone
        ctx.request("exit", pid.serial, cls, body, "shutdown")

        def down(ref: Ref = ref) -> Any:
            for i, m in enumerate(mailbox):
                if type(m) is Down and m.ref == ref:
                    del mailbox[i]
                    return m
            return None

        if ctx.wait_for(down, deadline) is None:
            return


def _wait_or_kill(os_pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(os_pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()  # (not select: a program with many streams has fds over 1023)
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            os.killpg(os_pid, signal.SIGKILL)
        os.waitpid(os_pid, 0)
    except ChildProcessError:
        pass
    finally:
        os.close(fd)


def zygote_os_pid() -> int | None:
    return _zygote_os_pid


def keeper_os_pid() -> int | None:
    return _keeper_os_pid


def _after_fork_in_child() -> None:
    """A fork otpy did not make (multiprocessing, say) must not act as its parent."""
    global _zygote_os_pid, _keeper_os_pid, _watch_w
    ctx = process.current
    process.current = None
    _zygote_os_pid = _keeper_os_pid = None
    if _watch_w is not None:
        try:
            os.close(_watch_w)  # else the keeper would not see the program die
        except OSError:
            pass
        _watch_w = None
    if ctx is not None:
        acks = [end for big in ctx.big_out.values() for end in (big.ack_read, big.ack_write)]
        for sock in list(ctx.out.values()) + acks + [ctx.inbound, ctx.ctrl]:
            try:
                sock.close()
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
