"""What a breaker's and a limiter's handles share: the handle itself (name,
namespace, timeout, pickling, equality), reaching the owner, and this
process's cache of connections to owners.

A handle is a name, not a connection: it pickles as (class, name,
namespace, timeout) and works in any process of the node. Its connection
(a page mapping, a counter slot, an open control page, a Redis client) is
made once per process, kept in one cache keyed by (class, node, namespace,
name), and dropped in a forked child: a fork must not share its parent's
counter slot or its open file's lock, so it connects afresh.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol

import otpy
from otpy import lowlevel

from . import _checks as checks
from ._shared_owner import OwnerLink

DEFAULT_TIMEOUT = 5.0


class Connection(Protocol):
    """A process's connection to one owner (what the cache keeps)."""

    #: True once it must not be used any more: the handle connects again
    dead: bool
    owner: OwnerLink

    def retire(self) -> None:
        """Mark it dead: every later use takes the slow path, which connects
        again. It lets go of nothing (it runs in a forked child too)."""

    def close(self) -> None:
        """Let go of what it holds (after :meth:`retire`, in its own process)."""


#: this process's connections, by (handle class, node, namespace, name)
_CONNECTIONS: dict[tuple[type, str, str, str], Connection] = {}


def _after_fork() -> None:
    for conn in _CONNECTIONS.values():
        conn.retire()  # a handle holding one connects afresh
    _CONNECTIONS.clear()


os.register_at_fork(after_in_child=_after_fork)


class Handle:
    """Base of ``CircuitBreaker`` and ``RateLimiter``: a handle on the owner
    registered as ``name`` in ``namespace`` (the caller's by default: an
    isolated tree's, in tests). ``timeout`` bounds each call to the owner,
    a restart waited out included (None or ``math.inf``: no limit).

    A subclass says what it is (KIND, its errors) and how it connects
    (:meth:`_connect`); ``_conn`` is its current connection, or
    NOT_CONNECTED (whose ``dead`` is True).
    """

    __slots__ = ("name", "namespace", "timeout", "_conn")

    KIND: ClassVar[str]  # "circuit breaker": for messages
    NOT_RUNNING: ClassVar[type[Exception]]
    TIMED_OUT: ClassVar[type[Exception]]
    NOT_CONNECTED: ClassVar[Any]

    def __init__(self, name: str, *, namespace: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.name = checks.name(name)
        self.namespace = lowlevel.current_namespace() if namespace is None else namespace
        seconds = checks.seconds(timeout, "timeout")
        self.timeout = float("inf") if seconds is None else seconds
        self._conn: Any = self.NOT_CONNECTED

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.name, self.namespace, self.timeout))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Handle) and other.KIND == self.KIND
                and other.name == self.name and other.namespace == self.namespace)

    def __hash__(self) -> int:
        return hash((self.name, self.namespace))

    # ---- the owner, and this process's connection to it ----------------------------------

    def _owner(self) -> OwnerLink:
        """The owner, through the connection's link when there is one."""
        conn = self._conn
        if not conn.dead:
            return conn.owner
        return OwnerLink(self.name, self.namespace, self.KIND, self.NOT_RUNNING, self.TIMED_OUT)

    def _ask(self, *request: Any) -> Any:
        """One operation of the owner; its error raised here."""
        return self._owner().ask(request, self.timeout)

    def _key(self) -> tuple[type, str, str, str]:
        return (type(self), otpy.self().node, self.namespace, self.name)

    def _connection(self) -> Any:
        """This process's connection (made, or made again if it died)."""
        key = self._key()
        conn = _CONNECTIONS.get(key)
        if conn is None or conn.dead:
            link = OwnerLink(self.name, self.namespace, self.KIND, self.NOT_RUNNING,
                             self.TIMED_OUT)
            conn = _CONNECTIONS[key] = self._connect(link)
        self._conn = conn
        return conn

    def _connect(self, owner: OwnerLink) -> Connection:
        """This process's connection to the owner: each kind of handle says how."""
        raise NotImplementedError(f"{type(self).__name__} must define _connect")

    def _forget(self) -> None:
        """Drop this process's connection: the next use connects again."""
        for conn in (_CONNECTIONS.pop(self._key(), None), self._conn):
            if conn is not None and not conn.dead:  # (the same one twice: retired once)
                conn.retire()
                conn.close()
        self._conn = self.NOT_CONNECTED

    def stop(self) -> None:
        """Stop the part's supervisor and owner (under a supervisor of your
        own, that supervisor's restart option decides what happens next)."""
        otpy.stop(self._ask("supervisor"))
        self._forget()


def _rebuild(cls: type[Handle], name: str, namespace: str, timeout: float) -> Handle:
    return cls(name, namespace=namespace, timeout=timeout)
