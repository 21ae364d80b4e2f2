"""The runtime's own terms: pids, references, and the Exit/Down messages."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple


class Pid:
    """A process identifier: hashable, ordered, picklable, usable from any process.

    Two pids are equal when they name the same process of the same node; the
    OS pid is carried along for diagnostics (``.os_pid``) but is not identity,
    because the OS reuses pids and otpy never reuses ``serial``.
    """

    __slots__ = ("node", "serial", "os_pid")

    def __init__(self, node: str, serial: int, os_pid: int) -> None:
        self.node = node
        self.serial = serial
        self.os_pid = os_pid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pid) and self.serial == other.serial and self.node == other.node

    def __lt__(self, other: "Pid") -> bool:
        if not isinstance(other, Pid):
            return NotImplemented
        return (self.node, self.serial) < (other.node, other.serial)

    def __hash__(self) -> int:
        return hash((self.node, self.serial))

    def __repr__(self) -> str:
        return f"<Pid {self.serial} os_pid={self.os_pid}>"

    def __reduce__(self):
        return (Pid, (self.node, self.serial, self.os_pid))


class Ref:
    """A unique reference (monitor, timer, call tag)."""

    __slots__ = ("origin", "n", "_hash")

    # next() on itertools.count is atomic under the GIL; no lock, so nothing
    # can be left locked in a forked child.
    _counter = itertools.count(1)

    def __init__(self, origin: tuple[str, int], n: int) -> None:
        self.origin = origin
        self.n = n
        # A call's ref is hashed about ten times (the awaited replies, the
        # waiting task, the filing of its reply): computed once, here.
        self._hash = hash((origin, n))

    @classmethod
    def make(cls, pid: Pid) -> "Ref":
        return cls((pid.node, pid.serial), next(cls._counter))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and self.n == other.n and self.origin == other.origin

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<Ref {self.origin[1]}.{self.n}>"

    def __reduce__(self):
        return (Ref, (self.origin, self.n))


class Exit(NamedTuple):
    """An exit signal received as a message because the receiver traps exits."""

    pid: Any
    reason: Any


class Down(NamedTuple):
    """A monitor fired: the monitored process ``pid`` exited with ``reason``."""

    ref: Ref
    pid: Any
    reason: Any


class BadMessage(NamedTuple):
    """Delivered in place of a message this process could not unpickle."""

    error: str
    data: bytes
