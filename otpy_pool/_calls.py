"""The caller's side of a command, shared by the handle and the pipeline:
the RUN message, its outcome, and the checks a command's input passes
before anything is sent."""

from __future__ import annotations

import pickle
from typing import Any

import otpy
from otpy import lowlevel

from ._protocol import OK, RUN


class NotRun(Exception):
    """The worker was dead before the command reached it: run it elsewhere."""


def run_call(ref: otpy.Ref, sid: Any, command: str, args: tuple, kwargs: dict,
             deadline: float | None = None) -> tuple:
    """A RUN for a worker, in otpy's call convention, with our own ``ref``
    (after a death, the worker's counts page says whether it was running it);
    ``deadline``: for an async worker, when it cancels the command."""
    if deadline is None:
        return (lowlevel.CALL, (otpy.self(), ref), (RUN, sid, command, args, kwargs))
    return (lowlevel.CALL, (otpy.self(), ref), (RUN, sid, command, args, kwargs, deadline))


def result(outcome: tuple) -> Any:
    """A command's value, or its exception raised."""
    if outcome[0] == OK:
        return outcome[1]
    raise outcome[1]


def check_command(command: Any) -> None:
    if not isinstance(command, str):
        raise TypeError(f"command must be a str (a @command's name), not {command!r}")


def check_session(session: Any) -> None:
    """A session id travels to the server and the workers and is looked up
    there: it must be hashable, and equal to a pickled copy of itself (not
    nan, not an object compared by identity), or it could never be found."""
    if type(session) in _PLAIN_IDS:  # the common case: always equal to their copies
        return
    try:
        hash(session)
    except TypeError:
        raise TypeError(f"a session id must be hashable, not {type(session).__name__}") from None
    try:
        copy = pickle.loads(pickle.dumps(session, 5))
    except Exception as exc:
        raise TypeError(f"a session id must be picklable, not {type(session).__name__}: "
                        f"{exc}") from None
    if copy != session:
        raise ValueError(f"a session id must equal a copy of itself (it is looked up in other "
                         f"processes), not {session!r} ({type(session).__name__})")


_PLAIN_IDS = frozenset({str, int, bytes})


def check_batch(calls: list, window: Any) -> None:
    """execute_many's input: every entry a tuple that otpy can send (checked
    before the first is sent, so a bad one never leaves the others half run)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1, not {window!r}")
    for i, entry in enumerate(calls):
        if type(entry) is not tuple:
            raise TypeError(f"execute_many: each call is a tuple of arguments, not {entry!r}")
        _check_sendable(i, entry)


def _check_sendable(i: int, entry: tuple) -> None:
    """SerializationError, naming the entry, if otpy could not send it: pickle,
    then dill (what otpy's messages use)."""
    try:
        pickle.dumps(entry, 5)
    except Exception:
        import dill  # only for what pickle cannot do (lambdas, closures), as otpy's wire

        try:
            dill.dumps(entry)
        except Exception as exc:
            raise otpy.SerializationError(
                f"execute_many: call {i} cannot be sent ({_unsendable(entry)}): {exc}; "
                "nothing was sent") from None


def _unsendable(entry: tuple) -> str:
    """The type of the first argument that cannot be pickled, for the error."""
    import dill

    for arg in entry:
        try:
            dill.dumps(arg)
        except Exception:
            return f"an argument of type {type(arg).__name__}"
    return "its arguments"
