"""What supervisors share: child specs, their errors, the restart-intensity
window, and how a child is shut down."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any, Callable, NamedTuple

from ..runtime import api, reasons
from ..runtime.errors import OtpyError, Timeout
from ..runtime.node import context
from ..runtime.terms import Down, Exit, Pid
from . import reports
from .gen_server import GenServer, Stop, call, stop

RESTARTS = ("permanent", "transient", "temporary")
TYPES = ("worker", "supervisor")
_DEFAULT = object()


class SupervisorError(OtpyError):
    """Base of the errors supervisor operations raise."""


class ChildNotFound(SupervisorError, LookupError):
    """No child with that id (or pid) under this supervisor."""


class ChildRunning(SupervisorError):
    """The operation needs the child stopped, and it is running."""


class AlreadyPresent(SupervisorError):
    """A child with that id is already under this supervisor."""


class MaxChildren(SupervisorError):
    """A DynamicSupervisor already has ``max_children`` children."""


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    ``start(*args, **kwargs)`` runs in the supervisor's process and returns the
    pid of a process linked to it (``GenServer.start_link`` does), or None to
    ignore the child. ``shutdown``: seconds to wait after the exit signal
    "shutdown" before killing, ``"brutal_kill"``, or ``"infinity"`` (the
    default for supervisors; 5.0 for workers).
    """

    id: Any
    start: Callable[..., Pid | None]
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    restart: str = "permanent"
    shutdown: Any = _DEFAULT
    type: str = "worker"

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"child id must be hashable, not {type(self.id).__name__}") from None
        if not callable(self.start):
            raise TypeError(f"child {self.id!r}: start must be callable, not {self.start!r}")
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"child {self.id!r}: kwargs must be a dict, not {self.kwargs!r}")
        if self.restart not in RESTARTS:
            raise ValueError(f"child {self.id!r}: restart must be one of {RESTARTS}, "
                             f"not {self.restart!r}")
        if self.type not in TYPES:
            raise ValueError(f"child {self.id!r}: type must be one of {TYPES}, not {self.type!r}")
        if self.shutdown is _DEFAULT:
            object.__setattr__(self, "shutdown", "infinity" if self.type == "supervisor" else 5.0)
        s = self.shutdown
        if not (s in ("brutal_kill", "infinity")
                or (isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0)):
            raise ValueError(f"child {self.id!r}: shutdown must be seconds >= 0, 'brutal_kill' "
                             f"or 'infinity', not {s!r}")


class Child:
    """A supervisor's record of one child: its spec, its pid while running,
    and what the observer shows (start order, restarts, last exit reason)."""

    __slots__ = ("spec", "pid", "order", "restarts", "last_exit")

    def __init__(self, spec: ChildSpec, order: int) -> None:
        self.spec = spec
        self.pid: Pid | None = None
        self.order = order
        self.restarts = 0
        self.last_exit: str | None = None

    def start(self) -> Pid | None:
        """Run the spec's start function (in the supervisor's process); check and report."""
        spec = self.spec
        pid = spec.start(*spec.args, **spec.kwargs)
        if pid is not None and type(pid) is not Pid:
            raise TypeError(f"child {spec.id!r}: start returned {pid!r}, expected a Pid or None")
        if pid is not None:
            reports.child_started(spec.id, pid, self.order, self.restarts, self.last_exit)
        self.pid = pid
        return pid

    def exited(self, reason: Any, intensity: "RestartIntensity") -> None:
        """Its Exit arrived: remember why, and report a crash."""
        pid, self.pid = self.pid, None
        self.last_exit = reasons.describe(reason)
        if not is_clean(reason):
            reports.crash_report(self.spec.id, pid, reason, intensity.count())

    def shutdown(self) -> None:
        """Stop it as its spec says, if it is running."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            reports.child_terminated(self.spec.id, pid, shutdown_child(pid, self.spec.shutdown))


class ChildInfo(NamedTuple):
    id: Any
    pid: Pid | None
    type: str


def ask(sup: Any, request: tuple) -> Any:
    """Client side of a supervisor operation: the error it raised, raised here."""
    outcome, value = call(sup, request, timeout=None)
    if outcome == "error":
        raise value
    return value


def dispatch(server: Any, request: tuple) -> tuple:
    """Server side: run ``_op_<name>`` and return its value or its error."""
    op, *args = request
    try:
        return ("ok", getattr(server, "_op_" + op)(*args))
    except Exception as exc:
        return ("error", exc)


class SupervisorBase(GenServer):
    """What Supervisor and DynamicSupervisor share: the queries, stop, and how
    operations reach the server (``_op_<name>`` methods, errors raised in the caller)."""

    start_timeout = 60.0  # children bound their own inits

    @staticmethod
    def which_children(sup: Any) -> list[ChildInfo]:
        """Children in start order: ChildInfo(id, pid or None, type)."""
        return ask(sup, ("which_children",))

    @staticmethod
    def count_children(sup: Any) -> dict[str, int]:
        """{"specs", "active", "supervisors", "workers"}."""
        return ask(sup, ("count_children",))

    @staticmethod
    def stop(sup: Any, reason: Any = "normal", timeout: float | None = None) -> None:
        """Stop the supervisor, which first stops all its children."""
        stop(sup, reason, timeout)

    def handle_call(self, request: tuple, caller: Any) -> Any:
        return dispatch(self, request)

    def _give_up(self, child: Child) -> Stop:
        """Over the restart intensity: stop everything and exit "shutdown"."""
        reports.intensity_exceeded(child.spec.id, self.intensity.max_restarts,
                                   self.intensity.max_seconds)
        self._stop_all()
        return Stop("shutdown")


def check_specs(specs: Any) -> list[ChildSpec]:
    specs = list(specs)
    seen = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpec instances, not {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)
    return specs


class RestartIntensity:
    """OTP's restart intensity: more than ``max_restarts`` restarts within
    ``max_seconds`` (a sliding window) means give up."""

    def __init__(self, max_restarts: int, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
        if not isinstance(max_seconds, (int, float)) or max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, not {max_seconds!r}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.clock = clock
        self.restarts: deque[float] = deque()

    def add(self) -> bool:
        """Record a restart; True if that exceeds the intensity."""
        self.restarts.append(self.clock())
        return self.count() > self.max_restarts

    def count(self) -> int:
        """Restarts within the window, as of now."""
        now = self.clock()
        while self.restarts and self.restarts[0] <= now - self.max_seconds:
            self.restarts.popleft()
        return len(self.restarts)


def restart_needed(spec: ChildSpec, reason: Any) -> bool:
    if spec.restart == "permanent":
        return True
    if spec.restart == "temporary":
        return False
    return not is_clean(reason)


def is_clean(reason: Any) -> bool:
    """normal, shutdown and ("shutdown", term) are clean exits."""
    return reason in ("normal", "shutdown") or (
        type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown")


def begin_shutdown(pid: Pid, shutdown: Any) -> Any:
    """Unlink, monitor and signal a child; returns the monitor ref.

    After the unlink no Exit from the child can arrive any more (one that was
    already sent is in the mailbox, in order, and is removed here).
    """
    mref = api.monitor(pid)
    api.unlink(pid)
    context().take(lambda m: type(m) is Exit and m.pid == pid)
    api.exit(pid, "kill" if shutdown == "brutal_kill" else "shutdown")
    return mref


def finish_shutdown(pid: Pid, mref: Any, shutdown: Any, deadline: float | None) -> Any:
    """Wait for the child's Down; kill it when its shutdown time is up."""
    def is_down(m: Any) -> bool:
        return type(m) is Down and m.ref == mref

    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return api.receive(timeout=timeout, match=is_down).reason
    except Timeout:
        api.exit(pid, "kill")
        return api.receive(match=is_down).reason


def shutdown_child(pid: Pid, shutdown: Any) -> Any:
    """Stop one child as its spec says; returns its exit reason."""
    mref = begin_shutdown(pid, shutdown)
    return finish_shutdown(pid, mref, shutdown, deadline_for(shutdown))


def deadline_for(shutdown: Any) -> float | None:
    if shutdown in ("infinity", "brutal_kill"):  # "kill" cannot be ignored: wait for it
        return None
    return time.monotonic() + shutdown
