"""DynamicSupervisor: children started on demand, restarted one for one,
stopped in parallel.

Same restart types and intensity as Supervisor. It starts with no children;
``start_child`` adds one (refused with MaxChildren past ``max_children``).
On shutdown every child gets its exit signal at once, and each is killed when
its own shutdown time is up.
"""

from __future__ import annotations

import itertools
from typing import Any

from .. import Exit, Pid, trap_exit
from ..lowlevel import (ChildSpec, Restart, RestartIntensity, Shutdown, ask, begin_shutdown,
                        deadline_for, finish_shutdown, restart_needed)
from . import _reports as reports
from ._supervision import RETRY, Child, ChildNotFound, MaxChildren, SupervisorBase


class DynamicSupervisor(SupervisorBase):
    """``DynamicSupervisor.start_link(max_children=None, max_restarts=3, max_seconds=5.0,
    name=None)``."""

    @classmethod
    def start_link(  # type: ignore[override]
            cls, *, max_children: int | None = None, max_restarts: int = 3,
            max_seconds: float = 5.0, name: str | None = None,
            timeout: float | None = None) -> Pid:
        _check(max_children, max_restarts, max_seconds)
        pid = super().start_link(max_children, max_restarts, max_seconds, name=name,
                                 timeout=timeout)
        assert pid is not None  # a supervisor's init never returns IGNORE
        return pid

    @classmethod
    def child_spec(  # type: ignore[override]
            cls, *, id: Any = None, restart: Restart = "permanent",
            shutdown: Shutdown = "infinity", **opts: Any) -> ChildSpec:
        """A spec that runs this supervisor (with ``opts``) as a child of another."""
        unknown = set(opts) - {"max_children", "max_restarts", "max_seconds", "name", "timeout"}
        if unknown:
            raise TypeError(f"DynamicSupervisor takes no option(s) {', '.join(sorted(unknown))}")
        _check(opts.get("max_children"), opts.get("max_restarts", 3), opts.get("max_seconds", 5.0))
        return ChildSpec(id if id is not None else opts.get("name", cls.__qualname__),
                         cls.start_link, kwargs=opts, restart=restart, shutdown=shutdown,
                         type="supervisor")

    # ---- the client API ---------------------------------------------------------

    @staticmethod
    def start_child(sup: Pid | str, spec: ChildSpec) -> Pid | None:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child needs a ChildSpec, not {spec!r}")
        return ask(sup, ("start_child", spec))

    @staticmethod
    def terminate_child(sup: Pid | str, pid: Pid) -> None:
        return ask(sup, ("terminate_child", pid))

    # ---- callbacks ----------------------------------------------------------------

    def init(self, max_children: int | None, max_restarts: int, max_seconds: float) -> None:
        trap_exit(True)
        reports.announce_supervisor()
        self.max_children = max_children
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self.order = itertools.count()
        # In start order. A child whose restart failed stays here with pid None
        # until a retry starts it, so max_children still counts it.
        self.children: list[Child] = []

    def handle_info(self, message: Any) -> Any:
        if type(message) is Exit:
            child = self._find_pid(message.pid)
            if child is not None:
                child.exited(message.reason, self.intensity)
                if restart_needed(child.spec, message.reason):
                    return self._restart(child)
                self.children.remove(child)
        elif type(message) is tuple and message[:1] == (RETRY,):
            child = next((c for c in self.children if c.order == message[1]), None)
            if child is not None and child.pid is None:
                return self._restart(child)
        return None

    def terminate(self, reason: Any) -> None:
        self._stop_all()

    def _restart(self, child: Child) -> Any:
        if self.intensity.add():
            return self._give_up(child)
        child.restarts += 1
        reports.restarting(child.spec.id)
        try:
            pid = child.start()
        except Exception as exc:
            reports.start_failed(child.spec.id, exc)
            self._retry_later(child.order)
            return None
        if pid is None:
            self.children.remove(child)
        return None

    def _stop_all(self) -> None:
        """All children at once: signal everyone, then wait for each in turn."""
        pending = [(c.pid, c, begin_shutdown(c.pid, c.spec.shutdown), deadline_for(c.spec.shutdown))
                   for c in self.children if c.pid is not None]
        for pid, child, mref, deadline in pending:
            reason = finish_shutdown(pid, mref, deadline)
            reports.child_terminated(child.spec.id, pid, reason, child.spec.shutdown)
        self.children.clear()

    # ---- operations -----------------------------------------------------------------

    def _op_start_child(self, spec: ChildSpec) -> Pid | None:
        if self.max_children is not None and len(self.children) >= self.max_children:
            raise MaxChildren(f"already {len(self.children)} children "
                              f"(max_children={self.max_children})")
        child = Child(spec, next(self.order))
        pid = child.start_or_fail()
        if pid is not None:
            self.children.append(child)
        return pid

    def _op_terminate_child(self, pid: Pid) -> None:
        child = self._find_pid(pid) if type(pid) is Pid else None
        if child is None:
            raise ChildNotFound(f"{pid!r} is not a child of this supervisor")
        self.children.remove(child)
        child.shutdown()


def _check(max_children: int | None, max_restarts: int, max_seconds: float) -> None:
    if max_children is not None and (not isinstance(max_children, int)
                                     or isinstance(max_children, bool) or max_children < 0):
        raise ValueError(f"max_children must be None or an int >= 0, not {max_children!r}")
    RestartIntensity(max_restarts, max_seconds)
