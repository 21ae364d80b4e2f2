"""ChildSpec: how a supervisor starts, restarts and stops one child.

A leaf module: it imports nothing of otpy's, so the behaviours (GenServer's
``child_spec``, the supervisors) and otpy_pool can all use it at module level.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Union

RESTARTS = ("permanent", "transient", "temporary")
TYPES = ("worker", "supervisor")

Restart = Literal["permanent", "transient", "temporary"]
#: seconds to wait after the exit signal "shutdown", or one of the two words
Shutdown = Union[float, Literal["brutal_kill", "infinity"]]


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    ``start(*args, **kwargs)`` runs in the supervisor's process and returns the
    pid of a process linked to it (``GenServer.start_link`` does), or None to
    ignore the child. ``restart``: "permanent" (always restarted), "transient"
    (restarted after an abnormal exit) or "temporary" (never). ``shutdown``:
    seconds to wait after the exit signal "shutdown" before killing,
    ``"brutal_kill"``, or ``"infinity"`` (the default for supervisors; 5.0 for
    workers).
    """

    id: Any
    start: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown: Shutdown = _DEFAULT
    type: Literal["worker", "supervisor"] = "worker"

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"child id must be hashable, not {type(self.id).__name__}") from None
        if not callable(self.start):
            raise TypeError(f"child {self.id!r}: start must be callable, not {self.start!r}")
        if isinstance(self.args, list):
            object.__setattr__(self, "args", tuple(self.args))
        elif not isinstance(self.args, tuple):  # (a str would start with its letters)
            raise TypeError(f"child {self.id!r}: args must be a tuple or a list, "
                            f"not {self.args!r}")
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


def is_clean(reason: Any) -> bool:
    """``"normal"``, ``"shutdown"`` and ``("shutdown", term)`` are clean exits."""
    return reason in ("normal", "shutdown") or (
        type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown")


def restart_needed(spec: ChildSpec, reason: Any) -> bool:
    """Whether a child that exited with ``reason`` is restarted, by its restart type."""
    if spec.restart == "permanent":
        return True
    if spec.restart == "temporary":
        return False
    return not is_clean(reason)
