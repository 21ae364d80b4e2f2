"""The node as a whole: starting and stopping it on purpose, and namespaces
(the private name spaces isolated trees are made of)."""

from __future__ import annotations

from typing import Any

from .._runtime import log, process, reasons
from .._runtime.node import context
from .._runtime import node as _node
from .._runtime.node import shutdown as _shutdown
from .._runtime.terms import Pid
from .._runtime.timeouts import check_timeout


def start() -> Pid:
    """Start this program's node now, if it is not running; the program's pid.

    otpy starts the node at the first otpy call. A program that starts threads
    of its own calls this first, so the zygote is forked while the program is
    still single-threaded.
    """
    return context().pid


def shutdown(timeout: float | None = None) -> None:
    """Stop the node in order, then kill and reap whatever remains.

    Each process the program started, newest first, gets the exit signal
    "shutdown" and is waited for (supervisors stop their children in reverse
    order, so trapping workers run ``terminate``), all within ``timeout``
    seconds (default: ``OTPY_SHUTDOWN_TIMEOUT``, 5 s). This is what happens
    when the program exits; the next otpy call starts a fresh node.
    """
    if timeout is not None:
        timeout = check_timeout(timeout, "shutdown timeout", forever=False)
    _shutdown(timeout)


def current_namespace() -> str:
    """The namespace names resolve in for the calling thread ("" is the node's own)."""
    return context().namespace()


def enter_namespace(namespace: str) -> None:
    """Make ``namespace`` the calling thread's: names and spawns use it until left."""
    context().push_namespace(namespace)


def leave_namespace(namespace: str) -> None:
    """Leave the innermost namespace, which must be ``namespace`` (else an OtpyError
    that is also a RuntimeError)."""
    context().pop_namespace(namespace)


def processes_in(namespace: str) -> list[Pid]:
    """The live processes spawned in ``namespace`` (and their descendants)."""
    return context().request("processes", namespace)


def registered_in(namespace: str) -> list[str]:
    """The names registered in ``namespace``."""
    return context().request("registered", namespace)


def unregister_in(namespace: str, name: str) -> bool:
    """Remove ``name`` from ``namespace``; False if it was not registered."""
    return context().request("unregister", namespace, name)


def process_name() -> str | None:
    """The calling process's registered name, if any."""
    return context().name


def logger(**bound: Any) -> log.Logger:
    """A logger bound to the calling process's context (node, pid, name, tree),
    with structlog's methods; structlog itself is imported at the first event
    the process writes (events below the level cost a comparison)."""
    return log.logger(**bound)


def log_enabled(level: str) -> bool:
    """Whether an event at ``level`` ("debug", "info", ...) would be written:
    to skip building its fields on a hot path."""
    return log.enabled(log.LEVELS[level])


def describe_reason(reason: Any, limit: int = 300) -> str:
    """A short text for an exit reason, as logs and the observer show it."""
    return reasons.describe(reason, limit)


def traceback_text(reason: Any) -> str | None:
    """The remote traceback carried by an exit reason, if it is an exception."""
    return reasons.traceback_text(reason)


def keep_traceback(exc: BaseException) -> BaseException:
    """Make ``exc`` carry its traceback when it is sent in a message (as exit
    reasons always do), so that the receiver can log it; returns ``exc``.
    A traceback too deep to send keeps its innermost frames, with a note
    saying how many were dropped."""
    return reasons.keep_traceback(exc)


def sendable_exception(exc: BaseException) -> BaseException:
    """``exc`` ready to be sent in a message, as exit reasons are: itself
    with its traceback if it pickles (exceptions chained to it that do not
    pickle become ``otpy.RemoteError`` stand-ins, so it keeps its type), else
    an ``otpy.RemoteError`` with its type name, text and traceback."""
    return reasons.sendable(exc, context().pid)


def is_trapping() -> bool:
    """Whether the calling process traps exits."""
    return context().trap


def node_running() -> bool:
    """Whether this program has a running node, without starting one."""
    ctx = process.current
    return ctx is not None and ctx.is_main


# ---- logs, for tools that capture or show them (the pytest plugin) ------------

LOG_LEVELS = log.LEVELS


def parse_log_lines(data: bytes) -> list[dict]:
    """The events in a JSON log (as ``configure_logging(json=True)`` writes it)."""
    return log.parse_lines(data)


def render_log_event(event: dict) -> str:
    """One parsed event as the console format shows it."""
    return log.render_console(event)


def reset_logging() -> None:
    """Configure logs from the environment again (OTPY_LOG, OTPY_LOG_LEVEL, OTPY_LOG_FILE)."""
    log.configure_from_environment()


def zygote_os_pid() -> int | None:
    """The OS pid of this program's zygote (the process that forks every otpy
    process), or None if the node is not running."""
    return _node.zygote_os_pid()


def keeper_os_pid() -> int | None:
    """The OS pid of this program's node keeper (the zygote's parent, which
    ends the node when the program dies), or None if the node is not running.
    With the zygote, ``processes()`` and the zygote's spare (a child of the
    zygote, see docs/architecture.md), every OS
    process of the node."""
    return _node.keeper_os_pid()
