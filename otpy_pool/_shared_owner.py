"""An owner under its own supervisor holding shared memory: the shape the
circuit breaker and the rate limiter share.

::

    caller's supervisor (or the caller, with start_link)
      └─ the part's supervisor   holds the page (a memfd), if the owner wants one
           └─ owner             a GenServer registered under the part's name

The page is created in the owner's start function, which runs in the
supervisor's process: the supervisor holds it, so it outlives an owner that
is killed and restarted, and every mapping of it stays valid across the
restart.

Handles reach the owner with :class:`OwnerLink`: by name, from any process or
thread, across the owner's restarts. A call that finds the owner dead or not
yet registered (its supervisor is restarting it) is retried until the
handle's timeout: a caller waits out a restart instead of failing, and never
waits longer than its deadline. Owners answer with ``lowlevel.dispatch``
(``_op_<name>`` methods): an unknown request is an error raised in the
caller, never ``None``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import otpy
from otpy import AlreadyStarted, ChildSpec, Exited, NoProc, Pid, StartError, Timeout
from otpy import lowlevel

from ._io import Ask, Sleep, arun, run
from ._shared_memory import hold

#: retry pauses while an owner is being restarted (seconds, doubling)
_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.05


class Owner(otpy.GenServer):
    """Base of a part's owner process. ``init`` gets the part's name, its
    checked options, its supervisor's pid and its page's ``(os_pid, fd,
    size)`` (None without one); requests go to ``_op_<name>`` methods."""

    #: names the page in /proc/<pid>/fd ("otpy-<KIND>:<name>") and keys it in its holder
    KIND: ClassVar[str] = ""
    supervisor: Pid  # set by the subclass's init

    @classmethod
    def page_bytes(cls, options: dict[str, Any]) -> int | None:
        """How big a page this owner needs with ``options`` (None: no page)."""
        return None

    def handle_call(self, request: Any, caller: lowlevel.From) -> Any:
        return lowlevel.dispatch(self, request)

    def _op_supervisor(self) -> Pid:
        """The part's own supervisor (``stop()`` stops it)."""
        return self.supervisor


def _start_owner(owner: type[Owner], name: str, options: dict[str, Any]) -> Pid | None:
    """The owner's start function: it runs in the part's supervisor, which
    therefore holds the page, so a restarted owner gets the same one."""
    size = owner.page_bytes(options)
    page_ref = None if size is None else hold((owner.KIND, name), size, f"otpy-{owner.KIND}:{name}")
    return owner.start_link(name, options, otpy.self(), page_ref, name=name)


def start_subtree(owner: type[Owner], name: str, options: dict[str, Any]) -> Pid:
    """Start the part's supervisor (linked to the caller) and its owner."""
    spec = ChildSpec("owner", _start_owner, args=(owner, name, options), shutdown=5.0)
    return otpy.Supervisor.start_link([spec])


def start(owner: type[Owner], name: str, options: dict[str, Any]) -> None:
    """:func:`start_subtree`; a name already taken raises AlreadyStarted
    itself, however deep the supervisors wrapped it."""
    try:
        start_subtree(owner, name, options)
    except StartError as exc:
        reason: Any = exc
        while isinstance(reason, StartError):
            reason = reason.reason
        if isinstance(reason, AlreadyStarted):
            raise reason from None
        raise


def child_spec(owner: type[Owner], name: str, options: dict[str, Any], id: Any,
               restart: Any) -> ChildSpec:
    """A spec that runs the part (its supervisor and owner) under your supervisor."""
    return ChildSpec(id if id is not None else name, start_subtree, args=(owner, name, options),
                     restart=restart, shutdown="infinity", type="supervisor")


def resolve_in(name: str, namespace: str) -> Pid:
    """The pid registered as ``name`` in ``namespace``; NoProc if none."""
    if namespace == lowlevel.current_namespace():
        return lowlevel.resolve(name)
    lowlevel.enter_namespace(namespace)
    try:
        return lowlevel.resolve(name)
    finally:
        lowlevel.leave_namespace(namespace)


class OwnerLink:
    """A cached pid for (name, namespace), re-resolved when the owner changes."""

    __slots__ = ("name", "namespace", "kind", "not_running", "timed_out", "pid")

    def __init__(self, name: str, namespace: str, kind: str, not_running: type[Exception],
                 timed_out: type[Exception]) -> None:
        self.name = name
        self.namespace = namespace
        self.kind = kind  # "circuit breaker" / "rate limiter", for messages
        self.not_running = not_running  # raised when the owner cannot be reached in time
        self.timed_out = timed_out  # raised when it does not answer in time
        self.pid: Pid | None = None

    def ask(self, request: tuple, timeout: float) -> Any:
        """``lowlevel.ask`` the owner (its error raised here), retried across
        a restart until ``timeout`` seconds (``math.inf``: no limit)."""
        return run(self.asking(request, timeout))

    async def aask(self, request: tuple, timeout: float) -> Any:
        """``ask`` for asyncio: the task waits, not the thread."""
        return await arun(self.asking(request, timeout))

    async def asking(self, request: tuple, timeout: float) -> Any:
        """``ask``'s steps, as operations of ``_io`` (either driver runs them)."""
        deadline = time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            try:
                pid = self.pid
                if pid is None:
                    pid = self.pid = resolve_in(self.name, self.namespace)
                return await Ask(pid, request, max(0.0, deadline - time.monotonic()))
            except (NoProc, Exited) as exc:
                self.pid = None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.not_running(
                        f"{self.kind} {self.name!r} is not running "
                        f"(namespace {self.namespace!r}): {exc}") from None
                await Sleep(min(pause, left))  # waiting out a restart, bounded
                pause = min(pause * 2, _MAX_PAUSE)
            except Timeout:
                raise self.timed_out(f"{self.kind} {self.name!r} did not answer "
                                     f"within {timeout}s") from None
