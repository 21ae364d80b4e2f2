"""The pool's pieces for test layers (see docs/testing.md, "Layers").

- "mock": :class:`InlinePool` runs a Worker's commands inline in the test's
  own process: the command logic only, no process, milliseconds.
- "bridge": real worker processes running :class:`MockWorker`, scripted
  with the replies, delays, failures, crashes and health a test needs
  (and, optionally, the commands it expects, in order).
- "full": real workers.

:func:`start_pool` starts the one an isolated tree's layer asks for;
:func:`ray_cluster` a Ray cluster of several nodes on this machine, for
pools placed with ``RayPlacement``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Iterator

import otpy

from ._errors import PoolError, PoolNotRunning, SessionNotFound, UnknownCommand, WorkerCrashed
from ._calls import check_command
from ._pool import Pool
from ._pool_options import PoolStatus
from ._ray_cluster import ray_cluster
from ._worker import Session, Worker

# ---- script steps --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    """Return ``value``."""

    value: Any = None


@dataclasses.dataclass(frozen=True)
class Fail:
    """Raise ``error`` (the caller's execute raises it)."""

    error: BaseException


@dataclasses.dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then do ``then`` (a step; default: reply None)."""

    seconds: float
    then: Any = Reply()


@dataclasses.dataclass(frozen=True)
class Crash:
    """The worker process dies at once (exit status ``code``): the caller
    gets WorkerCrashed and the pool replaces the worker."""

    code: int = 1


class UnexpectedCommand(PoolError, AssertionError):
    """A MockWorker got a command its ``expect`` list did not have next."""


HISTORY = "mock_history"  # MockWorker's own command: the commands it ran, in order


class _AnyCommand(dict):
    """MockWorker's command table: every name is a command (none replayed);
    the script decides, and names nothing scripted raise UnknownCommand."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def get(self, name: Any, default: Any = None) -> bool:  # type: ignore[override]
        return False


class MockWorker(Worker):
    """A scripted worker, for the "bridge" layer. Start a pool with it:

        Pool.start_link(MockWorker, kwargs={"script": {
            "run": Reply("ok"),                          # every time
            "load": [Reply(1), Fail(IOError("disk")), Reply(2)],  # in turn; the last repeats
            "slow": Delay(0.5, Reply("late")),
            "die": Crash(),
            "add": lambda session, x: x + 1,             # any function of (session, *args)
        }, "health": [True, True, False], "expect": ["load", "run"]})

    ``health``: what ``health_check`` returns, a bool or a list in turn (the
    last repeats). ``expect``: the commands it must get, in order; any other
    raises UnexpectedCommand in the caller. ``execute("mock_history")``
    returns the ``(command, args)`` it ran.
    """

    @classmethod
    def commands(cls) -> dict[str, bool]:
        return _AnyCommand()

    def init(self, script: dict[str, Any] | None = None, health: Any = True,
             expect: list[str] | None = None) -> None:
        script = check_script(script or {})
        self.script = {name: list(s) if isinstance(s, list) else [s]
                       for name, s in script.items()}
        self.health = list(health) if isinstance(health, list) else [health]
        self.expect = None if expect is None else list(expect)
        self.history: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or name in ("script", "health", "expect", "history"):
            raise AttributeError(name)
        return lambda session, *args, **kwargs: self._scripted(name, session, args, kwargs)

    def _scripted(self, name: str, session: Session, args: tuple, kwargs: dict,
                  inline: bool = False) -> Any:
        if name == HISTORY:
            return list(self.history)
        if self.expect is not None:
            wanted = self.expect.pop(0) if self.expect else None
            if wanted != name:
                raise UnexpectedCommand(f"MockWorker expected {wanted!r}, got {name!r}")
        if name not in self.script:
            raise UnknownCommand(f"MockWorker has no scripted command {name!r}")
        self.history.append((name, args))
        steps = self.script[name]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        return _perform(step, session, args, kwargs, inline)

    def health_check(self) -> Any:
        return self.health.pop(0) if len(self.health) > 1 else self.health[0]


def check_script(script: dict[str, Any]) -> dict[str, Any]:
    """The script, if every step is valid; TypeError/ValueError naming the command."""
    if not isinstance(script, dict):
        raise TypeError(f"a MockWorker script is a dict command -> step(s), not {script!r}")
    for name, steps in script.items():
        if not isinstance(name, str):
            raise TypeError(f"script: command names are str, not {name!r}")
        for step in steps if isinstance(steps, list) else [steps]:
            _check_step(name, step)
    return dict(script)


def _check_step(name: str, step: Any) -> None:
    if isinstance(step, Delay):
        if not isinstance(step.seconds, (int, float)) or step.seconds < 0:
            raise ValueError(f"script {name!r}: Delay needs seconds >= 0, not {step.seconds!r}")
        _check_step(name, step.then)
    elif isinstance(step, Fail):
        if not isinstance(step.error, BaseException):
            raise TypeError(f"script {name!r}: Fail needs an exception, not {step.error!r}")
    elif not isinstance(step, (Reply, Crash)) and not callable(step):
        raise TypeError(f"script {name!r}: a step is Reply, Fail, Delay, Crash or a function, "
                        f"not {step!r}")


def _perform(step: Any, session: Session, args: tuple, kwargs: dict, inline: bool) -> Any:
    if isinstance(step, Reply):
        return step.value
    if isinstance(step, Fail):
        raise step.error
    if isinstance(step, Delay):
        time.sleep(step.seconds)  # the scripted slowness itself
        return _perform(step.then, session, args, kwargs, inline)
    if isinstance(step, Crash):
        if inline:  # no process to lose: the caller sees what a crash gives it
            raise WorkerCrashed(("exit", step.code), "the inline worker crashed (scripted)")
        os._exit(step.code)
    return step(session, *args, **kwargs)


# ---- the "mock" layer: commands inline ----------------------------------------------------


class InlinePool:
    """A pool whose one worker runs inline, in the calling thread: the same
    commands and sessions, with no process, no timeout and no recovery.

    ``execute``, ``session``, ``end_session``, ``status``, ``workers``
    (always empty: there is no worker process) and ``stop`` behave as the
    pool's; errors a command raises are raised as they are.
    """

    def __init__(self, worker: type[Worker], args: tuple = (), kwargs: dict | None = None) -> None:
        if not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise TypeError(f"worker must be a Worker subclass, not {worker!r}")
        self.name = f"inline.{worker.__qualname__}"
        self.table = worker.commands()
        self.user = worker.__new__(worker)
        self.user.init(*args, **(kwargs or {}))
        self.sessions: dict[Any, Session] = {}
        self.counts = {"total_commands": 0, "errors": 0}
        self.stopped = False

    def __repr__(self) -> str:
        return f"<InlinePool {self.name!r}>"

    def execute(self, command: str, *args: Any, session: Any = None, timeout: Any = None,
                **kwargs: Any) -> Any:
        check_command(command)
        if self.stopped:
            raise PoolNotRunning(f"{self!r} is stopped")
        state = Session(None) if session is None else self.sessions.setdefault(
            session, Session(session))
        self.counts["total_commands"] += 1  # counted as the pool counts: unknown ones too
        try:
            if command not in self.table:
                raise UnknownCommand(f"{type(self.user).__name__} has no command {command!r}")
            if isinstance(self.user, MockWorker):
                return self.user._scripted(command, state, args, kwargs, inline=True)
            return getattr(self.user, command)(state, *args, **kwargs)
        except Exception:
            self.counts["errors"] += 1
            raise

    @contextlib.contextmanager
    def session(self, session: Any) -> Iterator[Any]:
        if session is None:
            raise ValueError("a session id cannot be None")
        pool = self

        class Bound:
            def execute(self, command: str, *args: Any, **kwargs: Any) -> Any:
                return pool.execute(command, *args, session=session, **kwargs)

        try:
            yield Bound()
        finally:
            self.sessions.pop(session, None)

    def end_session(self, session: Any) -> None:
        if self.sessions.pop(session, None) is None:
            raise SessionNotFound(f"no session {session!r} in {self!r}")

    def workers(self) -> list[otpy.Pid]:
        return []

    def status(self) -> PoolStatus:
        return PoolStatus(size=1, overflow=0, idle=1, busy=0, queued=0,
                          sessions=len(self.sessions), timeouts=0, worker_restarts=0,
                          sessions_recovered=0, sessions_lost=0, workers=1, **self.counts)

    def stop(self, timeout: float | None = None) -> None:
        self.stopped = True
        self.user.terminate("shutdown")


# ---- choosing by layer -----------------------------------------------------------------------


def start_pool(tree: Any, worker: type[Worker], args: tuple = (), kwargs: dict | None = None, *,
               script: dict[str, Any] | None = None, health: Any = True,
               name: str = "pool", **options: Any) -> Any:
    """The pool a test's layer asks for (``tree.layer``; None means "full"):
    "mock" -> an InlinePool of ``worker``; "bridge" -> a real pool of
    MockWorkers running ``script`` (required); "full" -> a real pool of
    ``worker``. Real pools are children of the tree's root supervisor (so the
    tree stops them); ``options`` are the pool's."""
    layer = getattr(tree, "layer", None) or "full"
    if layer == "mock":
        return InlinePool(worker, args, kwargs)
    if layer == "bridge":
        if script is None:
            raise ValueError("the bridge layer runs MockWorkers: start_pool needs script=")
        check_script(script)
        spec = Pool.child_spec(MockWorker, kwargs={"script": script, "health": health},
                               name=name, **options)
    elif layer == "full":
        spec = Pool.child_spec(worker, args, kwargs, name=name, **options)
    else:
        raise ValueError(f"unknown layer {layer!r}")
    tree.start_child(spec)
    return Pool(name)


__all__ = ["Crash", "Delay", "Fail", "HISTORY", "InlinePool", "MockWorker", "Reply",
           "UnexpectedCommand", "check_script", "start_pool", "ray_cluster"]
