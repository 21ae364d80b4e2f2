"""What supervisors log, and what they tell the observer about their children.

Events (structlog, see otpy._runtime.log), each with the supervisor's own
context (node, pid, name, tree) plus ``supervisor`` and ``child_id``. As in
OTP 21+, progress is info (hidden by default) and what went wrong is a
warning or an error:

- ``child started`` (info): pid, restarts so far (0)
- ``child restarted`` (warning): a restart happened; pid, restarts so far
- ``child terminated`` (info): stopped by its supervisor as planned (its
  shutdown reason, or "killed" for brutal_kill); pid, reason. A warning
  when it ended otherwise (killed when its shutdown time ran out, or died
  of something else meanwhile)
- ``crash report`` (error): an abnormal child exit; pid, reason, the remote
  traceback as ``exception``, and ``restarts_in_window`` (restarts counted
  in the intensity window before this one)
- ``start failed`` (error): a child's (re)start raised; reason and traceback
- ``restart intensity exceeded`` (error): the supervisor gives up and exits;
  ``last_failures`` names the most recent crash reasons

Restarts and giving up are also counted in the node's tables (``tally``:
"restart" per child, "restart_intensity_reached"), which otpy.metrics reads.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .. import Pid
from .. import self as self_pid
from ..lowlevel import (Shutdown, annotate, describe_reason, is_clean, logger, process_name,
                        tally, traceback_text)

# the last few abnormal exits and failed starts, for "restart intensity exceeded"
_recent_failures: deque[str] = deque(maxlen=5)


def child_label(child_id: Any) -> str:
    return child_id if isinstance(child_id, str) else repr(child_id)


def _supervisor() -> Any:
    return process_name() or self_pid().serial


def announce_supervisor() -> None:
    """A supervisor marks itself, so the observer draws it with its children."""
    annotate(self_pid(), is_supervisor=True)


def child_started(child_id: Any, pid: Pid, order: int, restarts: int,
                  last_exit: str | None) -> None:
    annotate(pid, supervisor=self_pid().serial, child_id=child_label(child_id),
             order=order, restarts=restarts, last_exit=last_exit)
    log = logger()
    write = log.warning if restarts else log.info
    write("child restarted" if restarts else "child started",
          supervisor=_supervisor(), child_id=child_label(child_id),
          child_pid=pid.serial, os_pid=pid.os_pid, restarts=restarts)


def restarting(child_id: Any) -> None:
    """A restart of the child is under way (counted per attempt, as its
    ``restarts`` are)."""
    tally("restart", child_label(child_id))


def child_terminated(child_id: Any, pid: Pid, reason: Any, shutdown: Shutdown) -> None:
    """Stopped by its supervisor (``shutdown``: how, from its spec)."""
    # "noproc": it died just before; its own Exit reports that death
    planned = is_clean(reason) or reason == "noproc" or \
        (shutdown == "brutal_kill" and reason == "killed")
    log = logger()
    write = log.info if planned else log.warning
    write("child terminated", supervisor=_supervisor(), child_id=child_label(child_id),
          child_pid=pid.serial, reason=describe_reason(reason))


def _failure(label: str, reason: Any) -> dict[str, Any]:
    """Remember a failure for "restart intensity exceeded"; the log fields
    describing it (its reason, and its traceback when it carries one)."""
    _recent_failures.append(f"{label}: {describe_reason(reason, 120)}")
    fields = {"reason": describe_reason(reason)}
    text = traceback_text(reason)
    if text is not None:
        fields["exception"] = text
    return fields


def crash_report(child_id: Any, pid: Pid, reason: Any, restarts_in_window: int) -> None:
    logger().error("crash report", supervisor=_supervisor(), child_id=child_label(child_id),
                   child_pid=pid.serial, os_pid=pid.os_pid,
                   restarts_in_window=restarts_in_window,
                   **_failure(child_label(child_id), reason))


def start_failed(child_id: Any, exc: BaseException) -> None:
    """A (re)start raised: the reason and its traceback, at error level."""
    cause = getattr(exc, "reason", None)  # a StartError carries the init's exception
    if isinstance(cause, BaseException):
        exc = cause
    logger().error("start failed", supervisor=_supervisor(), child_id=child_label(child_id),
                   **_failure(f"{child_label(child_id)} start", exc))


def intensity_exceeded(child_id: Any, max_restarts: int, max_seconds: float) -> None:
    tally("restart_intensity_reached")
    logger().error("restart intensity exceeded", supervisor=_supervisor(),
                   child_id=child_label(child_id), max_restarts=max_restarts,
                   max_seconds=max_seconds, last_failures=list(_recent_failures))
