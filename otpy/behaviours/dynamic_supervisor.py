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

from ..runtime import api
from ..runtime.terms import Exit, Pid
from . import reports
from .child import (Child, ChildInfo, ChildNotFound, ChildSpec, MaxChildren, RestartIntensity,
                    SupervisorBase, ask, begin_shutdown, deadline_for, finish_shutdown,
                    restart_needed)
from .gen_server import StartError

_RETRY = "$try_again_restart"


class DynamicSupervisor(SupervisorBase):
    """``DynamicSupervisor.start_link(max_children=None, max_restarts=3, max_seconds=5.0, name=None)``."""

    @classmethod
    def start_link(cls, *, max_children: int | None = None, max_restarts: int = 3,
                   max_seconds: float = 5.0, name: str | None = None,
                   timeout: float | None = None) -> Pid:
        _check(max_children, max_restarts, max_seconds)
        return super().start_link(max_children, max_restarts, max_seconds, name=name,
                                  timeout=timeout)

    @classmethod
    def child_spec(cls, *, id: Any = None, restart: str = "permanent",
                   shutdown: Any = "infinity", **opts: Any) -> ChildSpec:
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
        api.trap_exit(True)
        reports.announce_supervisor()
        self.max_children = max_children
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self.order = itertools.count()
        self.children: dict[Pid, Child] = {}  # in start order

    def handle_info(self, message: Any) -> Any:
        if type(message) is Exit and message.pid in self.children:
            child = self.children.pop(message.pid)
            child.exited(message.reason, self.intensity)
            if restart_needed(child.spec, message.reason):
                return self._restart(child)
        elif type(message) is tuple and message[:1] == (_RETRY,):
            return self._restart(message[1])
        return None

    def terminate(self, reason: Any) -> None:
        self._stop_all()

    def _restart(self, child: Child) -> Any:
        if self.intensity.add():
            return self._give_up(child)
        child.restarts += 1
        try:
            pid = child.start()
        except Exception:
            api.send(api.self(), (_RETRY, child))
            return None
        if pid is not None:
            self.children[pid] = child
        return None

    def _stop_all(self) -> None:
        """All children at once: signal everyone, then wait for each in turn."""
        pending = [(pid, child, begin_shutdown(pid, child.spec.shutdown),
                    deadline_for(child.spec.shutdown)) for pid, child in self.children.items()]
        for pid, child, mref, deadline in pending:
            reason = finish_shutdown(pid, mref, child.spec.shutdown, deadline)
            reports.child_terminated(child.spec.id, pid, reason)
        self.children.clear()

    # ---- operations -----------------------------------------------------------------

    def _op_start_child(self, spec: ChildSpec) -> Pid | None:
        if self.max_children is not None and len(self.children) >= self.max_children:
            raise MaxChildren(f"already {len(self.children)} children "
                              f"(max_children={self.max_children})")
        child = Child(spec, next(self.order))
        try:
            pid = child.start()
        except Exception as exc:
            raise StartError(exc, f"child {spec.id!r} failed to start: {exc!r}") from None
        if pid is not None:
            self.children[pid] = child
        return pid

    def _op_terminate_child(self, pid: Pid) -> None:
        child = self.children.pop(pid, None)
        if child is None:
            raise ChildNotFound(f"{pid!r} is not a child of this supervisor")
        child.shutdown()

    def _op_which_children(self) -> list[ChildInfo]:
        return [ChildInfo(c.spec.id, pid, c.spec.type) for pid, c in self.children.items()]

    def _op_count_children(self) -> dict[str, int]:
        specs = [c.spec for c in self.children.values()]
        return {"specs": len(specs), "active": len(specs),
                "supervisors": sum(s.type == "supervisor" for s in specs),
                "workers": sum(s.type == "worker" for s in specs)}


def _check(max_children: int | None, max_restarts: int, max_seconds: float) -> None:
    if max_children is not None and (not isinstance(max_children, int) or max_children < 0):
        raise ValueError(f"max_children must be None or an int >= 0, not {max_children!r}")
    RestartIntensity(max_restarts, max_seconds)
