"""Supervisor: starts children in order, restarts them by strategy, and gives
up (exit "shutdown", escalating to its own supervisor) when they crash too often.

A supervisor is a GenServer that traps exits. Its state machine::

    init: start children in list order, each started before the next
          a child fails to start -> stop the started ones in reverse order, fail
    running: Exit(child, reason)
          temporary, or transient with a clean reason -> forget or keep the spec
          otherwise -> count a restart; over the intensity -> stop all
          children in reverse order and exit "shutdown"
          else restart by strategy:
            one_for_one   the child
            one_for_all   stop the others (reverse order), start all (in order)
            rest_for_one  stop the ones after it (reverse), start it and them
          a restart that fails is retried, and each retry counts
    terminate: stop every child, in reverse start order, one at a time
"""

from __future__ import annotations

import itertools
from typing import Any

from .. import Exit, Pid, trap_exit
from ..lowlevel import ChildSpec, Restart, RestartIntensity, Shutdown, ask, restart_needed
from . import _reports as reports
from ._gen_server import StartError
from ._supervision import (RETRY, AlreadyPresent, Child, ChildNotFound, ChildRunning,
                           SupervisorBase, check_specs)

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


class Supervisor(SupervisorBase):
    """``Supervisor.start_link(children, strategy=..., max_restarts=3, max_seconds=5.0,
    name=...)``."""

    # A supervisor is a GenServer by implementation; its start functions and
    # child_spec take its own options, hence the override ignores below.
    @classmethod
    def start_link(  # type: ignore[override]
            cls, children: list[ChildSpec], *, strategy: str = "one_for_one",
            max_restarts: int = 3, max_seconds: float = 5.0, name: str | None = None,
            timeout: float | None = None) -> Pid:
        children = _check_options(children, strategy, max_restarts, max_seconds)
        pid = super().start_link(children, strategy, max_restarts, max_seconds,
                                 name=name, timeout=timeout)
        assert pid is not None  # a supervisor's init never returns IGNORE
        return pid

    @classmethod
    def start(  # type: ignore[override]
            cls, children: list[ChildSpec], *, strategy: str = "one_for_one",
            max_restarts: int = 3, max_seconds: float = 5.0, name: str | None = None,
            timeout: float | None = None) -> Pid:
        children = _check_options(children, strategy, max_restarts, max_seconds)
        pid = super().start(children, strategy, max_restarts, max_seconds,
                            name=name, timeout=timeout)
        assert pid is not None  # a supervisor's init never returns IGNORE
        return pid

    @classmethod
    def child_spec(  # type: ignore[override]
            cls, children: list[ChildSpec], *, id: Any = None, restart: Restart = "permanent",
            shutdown: Shutdown = "infinity", **opts: Any) -> ChildSpec:
        """A spec that runs this supervisor (with ``opts``) as a child of another."""
        children = _check_options(children, opts.get("strategy", "one_for_one"),
                                  opts.get("max_restarts", 3), opts.get("max_seconds", 5.0))
        return ChildSpec(id if id is not None else opts.get("name", cls.__qualname__),
                         cls.start_link, args=(children,), kwargs=opts, restart=restart,
                         shutdown=shutdown, type="supervisor")

    # ---- the client API ---------------------------------------------------------

    @staticmethod
    def terminate_child(sup: Pid | str, child_id: Any) -> None:
        """Stop a child; its spec stays (a temporary child's spec goes)."""
        return ask(sup, ("terminate_child", child_id))

    @staticmethod
    def restart_child(sup: Pid | str, child_id: Any) -> Pid | None:
        """Start a stopped child again from its spec."""
        return ask(sup, ("restart_child", child_id))

    @staticmethod
    def delete_child(sup: Pid | str, child_id: Any) -> None:
        """Remove a stopped child's spec."""
        return ask(sup, ("delete_child", child_id))

    @staticmethod
    def start_child(sup: Pid | str, spec: ChildSpec) -> Pid | None:
        """Add a child at the end and start it."""
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child needs a ChildSpec, not {spec!r}")
        return ask(sup, ("start_child", spec))

    # ---- callbacks ----------------------------------------------------------------

    def init(self, specs: list[ChildSpec], strategy: str, max_restarts: int,
             max_seconds: float) -> None:
        trap_exit(True)
        reports.announce_supervisor()
        self.strategy = strategy
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self.order = itertools.count()
        self.children: list[Child] = []
        for spec in specs:
            child = Child(spec, next(self.order))
            try:
                child.start_or_fail()
            except StartError:
                self._stop_all()
                raise
            self.children.append(child)

    def handle_info(self, message: Any) -> Any:
        if type(message) is Exit:
            child = self._find_pid(message.pid)
            if child is not None:
                child.exited(message.reason, self.intensity)
                return self._child_exited(child, message.reason)
        elif type(message) is tuple and message[:1] == (RETRY,):
            child = self._find_id(message[1])
            if child is not None and child.pid is None:
                return self._restart(child)
        return None

    def terminate(self, reason: Any) -> None:
        self._stop_all()

    # ---- restarts -----------------------------------------------------------------

    def _child_exited(self, child: Child, reason: Any) -> Any:
        if not restart_needed(child.spec, reason):
            if child.spec.restart == "temporary":
                self.children.remove(child)
            return None
        return self._restart(child)

    def _restart(self, child: Child) -> Any:
        if self.intensity.add():
            return self._give_up(child)
        if self.strategy == "one_for_one":
            group = [child]
        else:
            index = self.children.index(child)
            group = self.children if self.strategy == "one_for_all" else self.children[index:]
            for other in reversed(group):
                if other is not child:
                    other.shutdown()
            # a group restart counts once; temporary children are not restarted
            for other in list(group):
                if other is not child and other.spec.restart == "temporary":
                    self.children.remove(other)
            group = [c for c in group if c in self.children]
        for member in group:
            member.restarts += 1
            reports.restarting(member.spec.id)
            try:
                member.start()
            except Exception as exc:
                reports.start_failed(member.spec.id, exc)
                self._retry_later(member.spec.id)
                return None
        return None

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            child.shutdown()

    # ---- operations ---------------------------------------------------------------

    def _find_id(self, child_id: Any) -> Child | None:
        return next((c for c in self.children if c.spec.id == child_id), None)

    def _get(self, child_id: Any) -> Child:
        child = self._find_id(child_id)
        if child is None:
            raise ChildNotFound(f"no child {child_id!r}")
        return child

    def _op_terminate_child(self, child_id: Any) -> None:
        child = self._get(child_id)
        child.shutdown()
        if child.spec.restart == "temporary":
            self.children.remove(child)

    def _op_restart_child(self, child_id: Any) -> Pid | None:
        child = self._get(child_id)
        if child.pid is not None:
            raise ChildRunning(f"child {child_id!r} is running as {child.pid!r}")
        return child.start_or_fail()

    def _op_delete_child(self, child_id: Any) -> None:
        child = self._get(child_id)
        if child.pid is not None:
            raise ChildRunning(f"child {child_id!r} is running as {child.pid!r}; "
                               "terminate it first")
        self.children.remove(child)

    def _op_start_child(self, spec: ChildSpec) -> Pid | None:
        existing = self._find_id(spec.id)
        if existing is not None:
            state = f"running as {existing.pid!r}" if existing.pid else "stopped"
            raise AlreadyPresent(f"a child with id {spec.id!r} is already present ({state})")
        child = Child(spec, next(self.order))
        child.start_or_fail()
        if child.pid is not None or spec.restart != "temporary":
            self.children.append(child)
        return child.pid


def _check_options(children: Any, strategy: str, max_restarts: int,
                   max_seconds: float) -> list[ChildSpec]:
    """The children as a list, once every option is checked."""
    specs = check_specs(children)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    RestartIntensity(max_restarts, max_seconds)  # validates
    return specs
