"""What Supervisor and DynamicSupervisor share: their errors, the record of
one child (start, exit, shutdown, reports), the queries, and stop.

ChildSpec, the restart-intensity window and the shutdown protocol themselves
are in otpy.lowlevel, for any behaviour that supervises."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import OtpyError, Pid
from ..lowlevel import (ChildSpec, RestartIntensity, ask, describe_reason, dispatch, is_clean,
                        keep_traceback, shutdown_child)
from . import _reports as reports
from .. import send
from .. import self as self_pid
from ._gen_server import GenServer, StartError, Stop, stop

# How a supervisor retries a restart that failed: through its own mailbox, so
# a restart that keeps failing counts against the intensity instead of looping.
RETRY = "$try_again_restart"


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

    def start_or_fail(self) -> Pid | None:
        """As :meth:`start`, with any failure raised as a StartError naming the child."""
        try:
            return self.start()
        except Exception as exc:
            cause = getattr(exc, "reason", None)  # a StartError carries the init's exception
            if isinstance(cause, BaseException):
                keep_traceback(cause)  # its traceback travels on to whoever asked
            raise StartError(exc, f"child {self.spec.id!r} failed to start: {exc!r}") from None

    def exited(self, reason: Any, intensity: RestartIntensity) -> None:
        """Its Exit arrived: remember why, and report a crash."""
        pid, self.pid = self.pid, None
        self.last_exit = describe_reason(reason)
        if pid is not None and not is_clean(reason):
            reports.crash_report(self.spec.id, pid, reason, intensity.count())

    def shutdown(self) -> None:
        """Stop it as its spec says, if it is running."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            reports.child_terminated(self.spec.id, pid, shutdown_child(pid, self.spec.shutdown),
                                     self.spec.shutdown)


class ChildInfo(NamedTuple):
    id: Any
    pid: Pid | None
    type: str


class SupervisorBase(GenServer):
    """What Supervisor and DynamicSupervisor share: the queries, stop, and how
    operations reach the server (``_op_<name>`` methods, errors raised in the caller)."""

    start_timeout = 60.0  # children bound their own inits
    intensity: RestartIntensity  # set by each supervisor's init

    def _stop_all(self) -> None:
        """Stop every running child (each supervisor's own order)."""
        raise NotImplementedError

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

    # each supervisor's init sets ``self.children``: its Child records, in start order
    children: list[Child]

    def _find_pid(self, pid: Pid) -> Child | None:
        return next((c for c in self.children if c.pid == pid), None)

    def _op_which_children(self) -> list[ChildInfo]:
        return [ChildInfo(c.spec.id, c.pid, c.spec.type) for c in self.children]

    def _op_count_children(self) -> dict[str, int]:
        return {
            "specs": len(self.children),
            "active": sum(c.pid is not None for c in self.children),
            "supervisors": sum(c.spec.type == "supervisor" for c in self.children),
            "workers": sum(c.spec.type == "worker" for c in self.children),
        }

    @staticmethod
    def _retry_later(key: Any) -> None:
        """Retry a failed restart through the mailbox (see RETRY)."""
        send(self_pid(), (RETRY, key))

    def _give_up(self, child: Child) -> Stop:
        """Over the restart intensity: stop everything and exit "shutdown"."""
        reports.intensity_exceeded(child.spec.id, self.intensity.max_restarts,
                                   self.intensity.max_seconds)
        self._stop_all()
        return Stop("shutdown")


def check_specs(specs: Any) -> list[ChildSpec]:
    if isinstance(specs, ChildSpec):
        raise TypeError(f"children must be a list of ChildSpec, not one: [{specs!r}]")
    try:
        specs = list(specs)
    except TypeError:
        raise TypeError(f"children must be a list of ChildSpec, not {specs!r}") from None
    seen = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpec instances, not {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)
    return specs
