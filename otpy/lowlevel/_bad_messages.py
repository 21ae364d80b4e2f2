"""Messages a process could not decode (``otpy.BadMessage``): what can still
be read of them, and how a server answers a call it could not read, so that
the caller gets an error instead of waiting out its timeout. A *reply* the
caller cannot decode is never a BadMessage: it ends the call waiting for it
with a SerializationError (``failed_reply`` for replies read from the
mailbox)."""

from __future__ import annotations

from typing import Any

from .._runtime import api, wire
from .._runtime.process import REPLY, CallFailed
from .._runtime.terms import BadMessage, Pid
from ._calls import From

Undecodable = wire.Undecodable


def salvage(message: BadMessage) -> tuple[Any, list[str]]:
    """What can be read of ``message``: the term with every part that could
    not be decoded replaced by an :class:`Undecodable` (whose ``what`` names
    the missing class or failing type), and a text per failure. The term is
    None if nothing could be read. Slow: for the error path only."""
    if type(message) is not BadMessage:
        raise TypeError(f"salvage needs an otpy.BadMessage, not {type(message).__name__}")
    return wire.salvage(message.data)


def failed_reply(value: Any, sender: Pid) -> BaseException | None:
    """For a behaviour that takes replies from its mailbox itself (a pipeline
    of calls, say): the exception a call would raise for this reply value,
    or None for an ordinary one. A failure is a server's
    :func:`reply_error`, or a reply this process could not decode (a
    SerializationError naming ``sender``, what failed and why)."""
    if isinstance(value, CallFailed):
        return value.error_from(sender)
    return None


def reply_error(caller: From, error: BaseException) -> None:
    """Answer a call so that the caller's ``call`` raises ``error``."""
    if not isinstance(error, BaseException):
        raise TypeError(f"reply_error needs an exception, not {type(error).__name__}")
    api.send(caller.pid, (REPLY, caller.ref, CallFailed(error)))
