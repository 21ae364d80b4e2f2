"""DynamicSupervisor: children started on demand, restarted one for one,
stopped in parallel.

Same restart types and intensity as Supervisor. It starts with no children;
``start_child`` adds one (refused with MaxChildren past ``max_children``).
On shutdown every child gets its exit signal at once, and each is killed when
its own shutdown time is up.
"""

from __future__ import annotations

from typing import Any

from ..runtime import api
from ..runtime.terms import Exit, Pid
from .child import (ChildInfo, ChildNotFound, ChildSpec, MaxChildren, RestartIntensity,
                    SupervisorBase, ask, begin_shutdown, deadline_for, finish_shutdown,
                    restart_needed, start_child)
from .gen_server import StartError, Stop

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
        self.max_children = max_children
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self.children: dict[Pid, ChildSpec] = {}  # in start order

    def handle_info(self, message: Any) -> Any:
        if type(message) is Exit and message.pid in self.children:
            spec = self.children.pop(message.pid)
            if restart_needed(spec, message.reason):
                return self._restart(spec)
        elif type(message) is tuple and message[:1] == (_RETRY,):
            return self._restart(message[1])
        return None

    def terminate(self, reason: Any) -> None:
        self._stop_all()

    def _restart(self, spec: ChildSpec) -> Any:
        if self.intensity.add():
            self._stop_all()
            return Stop("shutdown")
        try:
            pid = start_child(spec)
        except Exception:
            api.send(api.self(), (_RETRY, spec))
            return None
        if pid is not None:
            self.children[pid] = spec
        return None

    def _stop_all(self) -> None:
        """All children at once: signal everyone, then wait for each in turn."""
        pending = [(pid, spec, begin_shutdown(pid, spec.shutdown), deadline_for(spec.shutdown))
                   for pid, spec in self.children.items()]
        for pid, spec, mref, deadline in pending:
            finish_shutdown(pid, mref, spec.shutdown, deadline)
        self.children.clear()

    # ---- operations -----------------------------------------------------------------

    def _op_start_child(self, spec: ChildSpec) -> Pid | None:
        if self.max_children is not None and len(self.children) >= self.max_children:
            raise MaxChildren(f"already {len(self.children)} children "
                              f"(max_children={self.max_children})")
        try:
            pid = start_child(spec)
        except Exception as exc:
            raise StartError(exc, f"child {spec.id!r} failed to start: {exc!r}") from None
        if pid is not None:
            self.children[pid] = spec
        return pid

    def _op_terminate_child(self, pid: Pid) -> None:
        spec = self.children.pop(pid, None)
        if spec is None:
            raise ChildNotFound(f"{pid!r} is not a child of this supervisor")
        finish_shutdown(pid, begin_shutdown(pid, spec.shutdown), spec.shutdown,
                        deadline_for(spec.shutdown))

    def _op_which_children(self) -> list[ChildInfo]:
        return [ChildInfo(spec.id, pid, spec.type) for pid, spec in self.children.items()]

    def _op_count_children(self) -> dict[str, int]:
        specs = list(self.children.values())
        return {"specs": len(specs), "active": len(specs),
                "supervisors": sum(s.type == "supervisor" for s in specs),
                "workers": sum(s.type == "worker" for s in specs)}


def _check(max_children: int | None, max_restarts: int, max_seconds: float) -> None:
    if max_children is not None and (not isinstance(max_children, int) or max_children < 0):
        raise ValueError(f"max_children must be None or an int >= 0, not {max_children!r}")
    RestartIntensity(max_restarts, max_seconds)
