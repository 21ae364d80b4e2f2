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

from . import wire
from .errors import OtpyError

NORMAL = "normal"
KILL = "kill"
OTHER = "other"
# Pickling a traceback (tblib) recurses once per frame: about 330 frames
# reach Python's default recursion limit. A deeper one is cut to its
# innermost frames, where the error happened.
MAX_FRAMES = 100


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


def keep_traceback(exc: BaseException) -> BaseException:
    """Make ``exc`` (and the exceptions chained to it) carry its traceback
    when pickled; a traceback too deep to pickle keeps its MAX_FRAMES
    innermost frames and gets a note saying how many were dropped.

    tblib is imported here, at the first exception that travels, not with
    otpy: a process that never sends one never loads it. Its receiver
    imports it through the pickle, which names it."""
    from tblib import pickling_support

    seen: set[int] = set()
    chained: BaseException | None = exc
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        _trim(chained)
        chained = chained.__cause__ or chained.__context__
    pickling_support.install(exc)
    return exc


def _trim(exc: BaseException) -> None:
    depth = 0
    tb = exc.__traceback__
    while tb is not None:
        depth += 1
        tb = tb.tb_next
    if depth <= MAX_FRAMES:
        return
    tb = exc.__traceback__
    for _ in range(depth - MAX_FRAMES):
        tb = tb.tb_next  # type: ignore[union-attr]
    try:
        exc.__traceback__ = tb
        exc.add_note(f"(otpy: the traceback was {depth} frames deep; the outermost "
                     f"{depth - MAX_FRAMES} were dropped to send it)")
    except Exception:  # an exception type that refuses attributes: sent as it is
        pass


def pack(reason: Any, pid: Any = None) -> tuple[str, bytes]:
    """Pack a reason for the wire. Exceptions keep their traceback (tblib) and pid."""
    if isinstance(reason, BaseException):
        if pid is not None and getattr(reason, "otpy_pid", None) is None:
            try:
                reason.otpy_pid = pid
            except Exception:
                pass
        keep_traceback(reason)
    try:
        kind, body = wire.encode(reason)
    except Exception:
        if not isinstance(reason, BaseException):
            raise
        kind, body = wire.encode(sendable(reason, pid))
    return classify(reason), bytes([kind]) + body


def sendable(exc: BaseException, pid: Any = None) -> BaseException:
    """``exc`` ready to be sent: itself, with its traceback (keep_traceback),
    if it pickles; else itself with the exceptions chained to it that do not
    pickle replaced by RemoteError stand-ins (an exception raised while
    handling an unpicklable one keeps its type); else a RemoteError standing
    for it."""
    keep_traceback(exc)
    try:
        wire.encode(exc)
        return exc
    except Exception:
        pass
    suppress = exc.__suppress_context__
    for attr in ("__cause__", "__context__"):
        chained = getattr(exc, attr)
        if chained is not None:
            try:
                wire.encode(chained)
            except Exception:
                setattr(exc, attr, _stand_in(chained, pid))
    exc.__suppress_context__ = suppress  # setting __cause__ sets it
    try:
        wire.encode(exc)
        return exc
    except Exception:
        return _stand_in(exc, pid)


def _stand_in(exc: BaseException, pid: Any) -> RemoteError:
    return RemoteError(
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        str(exc),
        "".join(traceback.format_exception(exc)),
        pid,
    )


def unpack(body: bytes) -> Any:
    """A packed reason; one that cannot be decoded here (its class cannot be
    imported or rebuilt) arrives as a RemoteError naming what failed."""
    try:
        return wire.decode(body[0], memoryview(body)[1:])
    except BaseException as exc:  # SystemExit from a __reduce__ too: never raised here
        term, problems = wire.salvage(bytes(body[1:]))
        what = "; ".join(problems) or f"{type(exc).__name__}: {exc}"
        type_name = term.what if isinstance(term, wire.Undecodable) else type(term).__name__
        return RemoteError(type_name, f"the exit reason could not be decoded here: {what}", "")


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


# What a death is counted as (the zygote's exit counts, otpy.metrics):
# "killed" is SIGKILL or the exit signal "kill"; "signal" another fatal
# signal (SIGSEGV, ...); "exit" a non-zero exit status (sys.exit(n));
# "error" any other reason: an exception, or a term given to exit.
EXIT_CLASSES = ("normal", "shutdown", "killed", "signal", "exit", "error")


def exit_class(summary: str) -> str:
    """The class of an exit reason, from its text (``describe``'s): the
    zygote never unpickles a reason, and the text says enough, since the
    runtime's own reasons are strings or tuples that start with one."""
    if summary in ("normal", "shutdown", "killed"):
        return summary
    for prefix, cls in _TUPLE_CLASSES:
        if summary.startswith(prefix):
            return cls
    return "error"


_TUPLE_CLASSES = (("('shutdown', ", "shutdown"), ("('signal', ", "signal"), ("('exit', ", "exit"))


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
