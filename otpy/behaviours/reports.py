"""What supervisors log, and what they tell the observer about their children.

Events (structlog, see otpy.runtime.log), each with the supervisor's own
context (node, pid, name, tree) plus ``supervisor`` and ``child_id``:

- ``child started`` / ``child restarted`` (info): pid, restarts so far
- ``child terminated`` (info): stopped by its supervisor; pid, reason
- ``crash report`` (error): an abnormal child exit; pid, reason, the remote
  traceback as ``exception``, and ``restarts_in_window`` (restarts counted
  in the intensity window before this one)
- ``restart intensity exceeded`` (error): the supervisor gives up and exits
"""

from __future__ import annotations

from typing import Any

from ..runtime import api, log, reasons
from ..runtime.node import context
from ..runtime.terms import Pid


def child_label(child_id: Any) -> str:
    return child_id if isinstance(child_id, str) else repr(child_id)


def _supervisor() -> Any:
    ctx = context()
    return ctx.name or ctx.pid.serial


def announce_supervisor() -> None:
    """A supervisor marks itself, so the observer draws it with its children."""
    api.annotate(api.self(), is_supervisor=True)


def child_started(child_id: Any, pid: Pid, order: int, restarts: int,
                  last_exit: str | None) -> None:
    api.annotate(pid, supervisor=api.self().serial, child_id=child_label(child_id),
                 order=order, restarts=restarts, last_exit=last_exit)
    log.logger().info("child restarted" if restarts else "child started",
                      supervisor=_supervisor(), child_id=child_label(child_id),
                      child_pid=pid.serial, os_pid=pid.os_pid, restarts=restarts)


def child_terminated(child_id: Any, pid: Pid, reason: Any) -> None:
    log.logger().info("child terminated", supervisor=_supervisor(),
                      child_id=child_label(child_id), child_pid=pid.serial,
                      reason=reasons.describe(reason))


def crash_report(child_id: Any, pid: Pid, reason: Any, restarts_in_window: int) -> None:
    details = {}
    text = reasons.traceback_text(reason)
    if text is not None:
        details["exception"] = text
    log.logger().error("crash report", supervisor=_supervisor(), child_id=child_label(child_id),
                       child_pid=pid.serial, os_pid=pid.os_pid, reason=reasons.describe(reason),
                       restarts_in_window=restarts_in_window, **details)


def intensity_exceeded(child_id: Any, max_restarts: int, max_seconds: float) -> None:
    log.logger().error("restart intensity exceeded", supervisor=_supervisor(),
                       child_id=child_label(child_id), max_restarts=max_restarts,
                       max_seconds=max_seconds)
