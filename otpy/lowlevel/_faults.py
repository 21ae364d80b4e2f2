"""Faults a process applies to itself, for failure injection
(``otpy.testing.inject_failure``): "slow", "partition", "corrupt", "memory"
and "fds". Crash, exit and hang need no help from the target (a signal or an
exit signal does it), so they are not here.

The target applies a fault when it next reads its inbound stream (at once if
it is waiting in ``receive``; a process busy in its own code applies it when
it next receives). Both functions return only once the target has applied
the control, so a message sent afterwards is affected and one sent before is
not. With no fault injected a process's message path is unchanged.
"""

from __future__ import annotations

from typing import Any

from .._runtime import api, faults
from .._runtime.errors import Exited, NoProc, OtpyError, Timeout
from .._runtime.node import context
from .._runtime.terms import Down, Pid, Ref
from .._runtime.timeouts import check_timeout

FAULT_KINDS = faults.KINDS


class FaultError(OtpyError):
    """The target could not apply the fault (it says why)."""


def inject_fault(pid: Pid, kind: str, *, timeout: float | None = 5.0, **opts: Any) -> Ref:
    """Make ``pid`` apply fault ``kind``; the token to heal it with.

    Options: slow ``delay`` (seconds added to each message it receives);
    partition ``peers`` (serials; default all) and ``drop_in`` (drop every
    incoming message, default True); corrupt ``count`` (default 1);
    memory ``megabytes`` (at once) or ``rate`` (MB/s, up to ``limit``,
    default 1024); fds (none). Raises Timeout if the target has not applied
    it within ``timeout`` (it is then told to drop it), NoProc if it is dead,
    FaultError if it failed to apply it.
    """
    faults.check(kind, opts)
    token = _control(pid, "inject", kind, opts, timeout)
    return token


def heal_fault(pid: Pid, token: Ref, *, timeout: float | None = 5.0) -> bool:
    """Undo a fault; False if ``pid`` is dead (a dead process has nothing to heal)."""
    try:
        _control(pid, "heal", "", {}, timeout, token)
    except Exited:  # NoProc included
        return False
    return True


def _control(pid: Pid, op: str, kind: str, opts: dict, timeout: float | None,
             token: Ref | None = None) -> Ref:
    if type(pid) is not Pid:
        raise TypeError(f"expected a Pid, not {type(pid).__name__}: {pid!r}")
    ctx = context()
    if pid == ctx.pid:
        raise ValueError("a process cannot inject a fault into itself")
    timeout = check_timeout(timeout, f"{op}_fault timeout")
    if token is None:
        token = Ref.make(ctx.pid)
    mref = api.monitor(pid)
    try:
        faults.send(ctx, pid, (faults.TAG, token, op, kind, opts, ctx.pid))

        def answered(m: Any) -> bool:
            return (type(m) is tuple and len(m) == 3 and m[0] == faults.ACK and m[1] == token) \
                or (type(m) is Down and m.ref == mref)

        try:
            answer = api.receive(timeout=timeout, match=answered)
        except Timeout:
            if op == "inject":  # it may apply it later: have it dropped right after
                faults.send(ctx, pid, (faults.TAG, token, "heal", "", {}, None))
            raise Timeout(f"{pid!r} did not apply fault {op} {kind!r} within {timeout}s "
                          "(is it busy outside receive, or stopped?)") from None
    finally:
        api.demonitor(mref, flush=True)
    if type(answer) is Down:
        if answer.reason == "noproc":
            raise NoProc(pid)
        raise Exited(answer.reason, pid)
    if answer[2] != "ok":
        raise FaultError(f"{pid!r} could not apply fault {kind or op!r}: {answer[2]}")
    return token


__all__ = ["FAULT_KINDS", "FaultError", "heal_fault", "inject_fault"]
