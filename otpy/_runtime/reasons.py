"""Exit reasons: how they are classified, packed and derived from wait statuses.

The zygote decides link propagation without unpickling user terms, so a
reason travels as ``(cls, body)``: ``cls`` is "normal", "kill" or "other" and
``body`` is the pickled reason, opaque to the zygote.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from typing import Any

from tblib import pickling_support

from . import wire
from .errors import OtpyError

NORMAL = "normal"
KILL = "kill"
OTHER = "other"


class RemoteError(OtpyError):
    """Stands in for an exception that could not be pickled: keeps its text."""

    def __init__(self, type_name: str, text: str, formatted: str, otpy_pid: Any = None) -> None:
        super().__init__(f"{type_name}: {text}")
        self.type_name = type_name
        self.text = text
        self.formatted = formatted
        self.otpy_pid = otpy_pid

    def __reduce__(self):
        return (RemoteError, (self.type_name, self.text, self.formatted, self.otpy_pid))


def classify(reason: Any) -> str:
    if isinstance(reason, str):
        if reason == "normal":
            return NORMAL
        if reason == "kill":
            return KILL
    return OTHER


def pack(reason: Any, pid: Any = None) -> tuple[str, bytes]:
    """Pack a reason for the wire. Exceptions keep their traceback (tblib) and pid."""
    if isinstance(reason, BaseException):
        if pid is not None and getattr(reason, "otpy_pid", None) is None:
            try:
                reason.otpy_pid = pid
            except Exception:
                pass
        pickling_support.install(reason)
    try:
        kind, body = wire.encode(reason)
    except Exception:
        if not isinstance(reason, BaseException):
            raise
        kind, body = wire.encode(_stand_in(reason, pid))
    return classify(reason), bytes([kind]) + body


def _stand_in(exc: BaseException, pid: Any) -> RemoteError:
    return RemoteError(
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        str(exc),
        "".join(traceback.format_exception(exc)),
        pid,
    )


def unpack(body: bytes) -> Any:
    return wire.decode(body[0], memoryview(body)[1:])


def constant(term: Any) -> tuple[str, bytes]:
    """Pack a runtime-made reason ("killed", ("signal", ...), ...)."""
    return classify(term), bytes([wire.MSG]) + pickle.dumps(term, 5)


def from_wait_status(status: int) -> Any:
    """What the OS knows about a death with no last words."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return "killed"
        try:
            return ("signal", signal.Signals(sig).name)
        except ValueError:
            return ("signal", sig)
    code = os.WEXITSTATUS(status)
    return "normal" if code == 0 else ("exit", code)


def describe(reason: Any, limit: int = 300) -> str:
    """A short text for an exit reason (logs, the observer): a string as it
    is, anything else as its repr, cut to ``limit`` characters."""
    text = reason if isinstance(reason, str) else repr(reason)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def traceback_text(reason: Any) -> str | None:
    """The (remote) traceback of an exception reason, formatted; None for other reasons."""
    if isinstance(reason, RemoteError):
        return reason.formatted
    if isinstance(reason, BaseException):
        return "".join(traceback.format_exception(reason))
    return None


def from_exception(exc: BaseException) -> Any:
    """The reason a process body ending with ``exc`` exits with."""
    from .errors import ProcessExit

    if isinstance(exc, ProcessExit):
        return exc.reason
    if isinstance(exc, SystemExit):
        code = exc.code
        return "normal" if code in (None, 0) else ("exit", code)
    return exc
