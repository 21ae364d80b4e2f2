"""Stopping processes the OTP way: an exit signal, a bounded wait, then "kill".

The shutdown protocol a supervisor follows for one child (``shutdown_child``)
is split in two halves (``begin_shutdown`` / ``finish_shutdown``) so that a
DynamicSupervisor can signal every child first and then wait for each.
"""

from __future__ import annotations

import time
from typing import Any

from .._runtime import api, reasons
from .._runtime.errors import Timeout
from .._runtime.node import context
from .._runtime.terms import Down, Exit, Pid, Ref
from .._runtime.timeouts import check_timeout


def await_down(ref: Ref, timeout: float | None = None) -> Any:
    """Wait for the ``Down`` of monitor ``ref``; return the exit reason.

    Other messages stay queued. Timeout if it has not come within
    ``timeout`` seconds (None waits until it comes: a monitor always fires).
    """
    timeout = check_timeout(timeout, "await_down timeout")
    return api.receive(timeout=timeout, match=lambda m: type(m) is Down and m.ref == ref).reason


def flush(match: Any) -> int:
    """Remove every queued message for which ``match(message)`` is true; how many."""
    return context().take(match)


def begin_shutdown(pid: Pid, shutdown: Any) -> Ref:
    """Monitor, unlink and signal a process; returns the monitor ref.

    After the unlink no Exit from it can arrive any more (one that was already
    sent is in the mailbox, in order, and is removed here). ``shutdown`` is a
    ChildSpec's: "brutal_kill" sends "kill", anything else "shutdown".
    """
    return _signal(pid, "kill" if shutdown == "brutal_kill" else "shutdown")


def _signal(pid: Pid, reason: Any) -> Ref:
    """Monitor, unlink (dropping an Exit of ``pid`` already queued), send ``reason``."""
    mref = api.monitor(pid)
    api.unlink(pid)
    context().take(lambda m: type(m) is Exit and m.pid == pid)
    api.exit(pid, reason)
    return mref


def deadline_for(shutdown: Any) -> float | None:
    """When a child stopped with ``shutdown`` is killed (None: never, wait for it)."""
    if shutdown in ("infinity", "brutal_kill"):  # "kill" cannot be ignored: wait for it
        return None
    return time.monotonic() + shutdown


def finish_shutdown(pid: Pid, mref: Ref, deadline: float | None) -> Any:
    """Wait for the Down; kill the process when ``deadline`` passes. Its exit reason."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return await_down(mref, timeout)
    except Timeout:
        api.exit(pid, "kill")
        return await_down(mref)


def shutdown_child(pid: Pid, shutdown: Any) -> Any:
    """Stop one child as its ChildSpec's ``shutdown`` says; returns its exit reason."""
    mref = begin_shutdown(pid, shutdown)
    return finish_shutdown(pid, mref, deadline_for(shutdown))


def stop_process(pid: Pid, reason: Any = "shutdown", timeout: float | None = 5.0) -> Any:
    """Stop ``pid``: exit signal ``reason``, wait up to ``timeout``, then "kill".

    Returns its exit reason ("noproc" if it was already dead). A link between
    the caller and ``pid`` is removed first, so a non-trapping caller survives
    and a trapping one gets no Exit. ``timeout=None`` waits as long as it takes.
    """
    timeout = check_timeout(timeout, "stop_process timeout")
    mref = _signal(pid, reason)
    deadline = None if timeout is None else time.monotonic() + timeout
    return finish_shutdown(pid, mref, deadline)


def kill(pid: Pid, reason: Any) -> None:
    """Kill ``pid`` at once, as the exit signal ``"kill"`` does (SIGKILL: it
    cannot be trapped, and no code of the target runs), but with ``reason``
    as its exit reason instead of ``"killed"``.

    Why: a process stopped on purpose that cannot be asked to stop (it is
    stuck in a command, or it traps exits) is still a planned stop. With
    ``("shutdown", why)`` its supervisor sees a clean exit (no crash report),
    and linked and monitoring processes learn why. Links propagate
    ``reason`` as for any exit. ``"kill"`` is refused (use ``exit(pid,
    "kill")``). A dead pid is ignored; the program's own process is never
    killed (it is told, as for any fatal exit signal).
    """
    ctx = context()
    if type(pid) is not Pid:
        raise TypeError(f"kill needs a Pid, not {pid!r}")
    if reason == "kill":
        raise ValueError('kill(pid, "kill") is exit(pid, "kill"): give the reason to record')
    cls, body = reasons.pack(reason, ctx.pid)
    if pid.node == ctx.node:
        ctx.request("kill", pid.serial, cls, body, reasons.describe(reason))
