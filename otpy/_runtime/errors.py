"""Exceptions raised by the runtime. All derive from :class:`OtpyError`."""

from __future__ import annotations

from typing import Any


class OtpyError(Exception):
    """Base class of every error otpy raises."""


class Exited(OtpyError):
    """The process an operation depended on exited; ``reason`` says why."""

    def __init__(self, reason: Any, pid: Any = None, message: str | None = None) -> None:
        self.reason = reason
        self.pid = pid
        super().__init__(message or f"process {pid!r} exited: {reason!r}")

    def __reduce__(self):  # keep reason and pid across pickling
        return (type(self), (self.reason, self.pid, str(self)))


class NoProc(Exited):
    """No such process: the pid is dead or the name is not registered."""

    def __init__(self, target: Any = None, message: str | None = None) -> None:
        super().__init__("noproc", target, message or f"no process: {target!r}")
        self.target = target

    def __reduce__(self):
        return (type(self), (self.target, str(self)))


class Timeout(OtpyError, TimeoutError):
    """A blocking operation's timeout expired."""


class NamespaceError(OtpyError, RuntimeError):
    """Namespaces (isolated trees) left out of the order they were entered in."""


class SerializationError(OtpyError, TypeError):
    """A term could not be pickled; nothing was sent."""


class AlreadyRegistered(OtpyError):
    """The name is taken (``pid`` is its owner), or the process already has a name."""

    def __init__(self, name: str, pid: Any, message: str | None = None) -> None:
        self.name = name
        self.pid = pid
        super().__init__(message or f"name {name!r} is already registered to {pid!r}")

    def __reduce__(self):
        return (type(self), (self.name, self.pid, str(self)))


class RuntimeGone(OtpyError):
    """The node's zygote is gone (the program is shutting down or it crashed)."""


class ProcessExit(BaseException):
    """Raised inside a process to make it exit with ``reason``.

    Derives from BaseException so that ``except Exception`` in user code does
    not swallow an exit, as in Erlang where ``exit/1`` is not an error.
    """

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(reason)
