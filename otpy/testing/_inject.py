"""inject_failure: real faults in real processes, undone by ``.heal()`` or at
the end of the isolated tree they were injected in.

- "crash": a signal (SIGKILL unless ``signal=``), sent through a pidfd so a
  reused OS pid can never be hit;
- "exit": an exit signal with ``reason=`` (default "injected"), as
  ``otpy.exit`` sends it: a trapping target gets it as a message;
- "hang": SIGSTOP; SIGCONT when healed or after ``duration``;
- "slow", "partition", "corrupt", "memory", "fds": applied by the target's
  own runtime (``otpy.lowlevel.inject_fault``), which must be receiving to
  apply them; returns once applied.

``duration`` (any healable kind) heals the fault after that many seconds,
from a timer thread of the injecting program. Crash and exit cannot be
undone: their ``heal()`` does nothing.
"""

from __future__ import annotations

import os
import signal as _signal
import threading
import time
from typing import Any

from .. import NoProc, OtpyError, Pid, exit, is_alive, whereis
from .. import self as otpy_self
from .. import lowlevel
from ._helpers import wait_for
from ._tree import Tree, active_tree

KINDS = ("crash", "exit", "hang", "slow", "partition", "corrupt", "memory", "fds")
_OPTIONS = {
    "crash": {"signal"},
    "exit": {"reason"},
    "hang": {"duration", "timeout"},
    "slow": {"delay", "duration", "timeout"},
    "partition": {"peers", "duration", "timeout"},
    "corrupt": {"count", "timeout"},
    "memory": {"megabytes", "rate", "limit", "duration", "timeout"},
    "fds": {"duration", "timeout"},
}


class Injection:
    """One injected fault. ``heal()`` undoes it (idempotent); also a context
    manager that heals on exit."""

    def __init__(self, kind: str, target: Pid, opts: dict[str, Any]) -> None:
        self.kind = kind
        self.target = target
        self.opts = opts
        self.at = time.monotonic()
        self.healed = False
        self._undo: list[tuple[Pid, Any]] = []  # (process, token) for runtime faults
        self._pidfd: int | None = None  # hang: the stopped process
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def heal(self) -> None:
        """Undo the fault. A target that died meanwhile has nothing to undo.

        Every part is undone even if one fails (a process that does not
        answer within the injection's ``timeout``); the first failure is then
        raised, with the others as notes."""
        with self._lock:
            if self.healed:
                return
            self.healed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._pidfd is not None:
                try:
                    _signal.pidfd_send_signal(self._pidfd, _signal.SIGCONT)
                except ProcessLookupError:
                    pass
                os.close(self._pidfd)
                self._pidfd = None
            failures: list[OtpyError] = []
            for pid, token in reversed(self._undo):
                try:
                    lowlevel.heal_fault(pid, token, timeout=self.opts.get("timeout", 5.0))
                except OtpyError as exc:
                    failures.append(exc)
            if failures:
                for other in failures[1:]:
                    failures[0].add_note(f"also not healed: {other}")
                raise failures[0]

    def __enter__(self) -> Injection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.heal()

    def __repr__(self) -> str:
        state = "healed" if self.healed else "active"
        return f"<Injection {self.kind} {self.target!r} {state}>"


def inject_failure(kind: str, target: Any, *, tree: Tree | None = None,
                   **opts: Any) -> Injection:
    """Inject fault ``kind`` into ``target`` (a Pid, a registered name, or an
    object with a ``.pid``, such as a pool's worker); see the module doc for
    the kinds and their options. The injection is healed when the isolated
    tree active in this thread (or ``tree``) exits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown failure kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = set(opts) - _OPTIONS[kind]
    if unknown:
        raise TypeError(f"inject_failure({kind!r}) takes no option(s) {', '.join(sorted(unknown))}")
    duration = opts.get("duration")
    if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
        raise ValueError(f"duration must be a positive number of seconds, not {duration!r}")
    pid = resolve_target(target)
    injection = Injection(kind, pid, dict(opts))
    if kind == "crash":
        sig = opts.get("signal", _signal.SIGKILL)
        if not isinstance(sig, int) or isinstance(sig, bool):
            raise TypeError(f"signal must be a signal number, not {sig!r}")
        _send_signal(pid, sig)
        injection.healed = True  # nothing to undo
        return injection
    if kind == "exit":
        exit(pid, opts.get("reason", "injected"))
        injection.healed = True
        return injection
    tree = tree if tree is not None else active_tree()
    if kind == "hang":
        injection._pidfd = _pidfd(pid)
        try:
            _signal.pidfd_send_signal(injection._pidfd, _signal.SIGSTOP)
            # the signal is delivered when the target is next scheduled
            wait_for(lambda: _stopped(pid), opts.get("timeout", 5.0))
        except ProcessLookupError:  # it died and was reaped since _pidfd checked it
            injection.heal()
            raise NoProc(pid) from None
        except BaseException:
            injection.heal()
            raise
    else:
        _inject_runtime(injection, kind, pid, opts)
    if tree is not None:
        tree.on_exit(injection.heal)
    if duration is not None:
        injection._timer = threading.Timer(duration, injection.heal)
        injection._timer.daemon = True
        injection._timer.start()
    return injection


def _inject_runtime(injection: Injection, kind: str, pid: Pid, opts: dict) -> None:
    fault = {k: v for k, v in opts.items() if k not in ("duration", "timeout")}
    timeout = opts.get("timeout", 5.0)
    if kind == "partition":
        peers = fault.pop("peers", None)
        if peers is not None:
            peer_pids = [resolve_target(p) for p in peers]
            fault["peers"] = [p.serial for p in peer_pids]
            fault["drop_in"] = False  # each peer drops what it sends the target
            try:
                for peer in peer_pids:
                    token = lowlevel.inject_fault(peer, "partition", timeout=timeout,
                                                  peers=[pid.serial], drop_in=False)
                    injection._undo.append((peer, token))
            except BaseException:
                injection.heal()
                raise
    try:
        injection._undo.append((pid, lowlevel.inject_fault(pid, kind, timeout=timeout, **fault)))
    except BaseException:
        injection.heal()
        raise


def resolve_target(target: Any) -> Pid:
    """A Pid for a Pid, a registered name, or an object with a ``.pid``."""
    if isinstance(target, str):
        pid = whereis(target)
        if pid is None:
            raise NoProc(target, f"cannot inject a failure: no process is registered as {target!r}")
    else:
        pid = target if isinstance(target, Pid) else getattr(target, "pid", None)
    if not isinstance(pid, Pid):
        raise TypeError("a failure target is a Pid, a registered name or an object with a .pid, "
                        f"not {type(target).__name__}")
    if pid == otpy_self():
        raise ValueError("cannot inject a failure into the calling process")
    return pid


def _pidfd(pid: Pid) -> int:
    """A pidfd for ``pid``'s OS process. Checked alive after opening: while
    the otpy process lives its OS pid is not reaped, so cannot be reused."""
    try:
        fd = os.pidfd_open(pid.os_pid)
    except ProcessLookupError:
        raise NoProc(pid) from None
    if not is_alive(pid):
        os.close(fd)
        raise NoProc(pid)
    return fd


def _stopped(pid: Pid) -> bool:
    """True once the process is stopped, or gone (nothing left to wait for)."""
    try:
        with open(f"/proc/{pid.os_pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X")
    except (OSError, IndexError):
        return True


def _send_signal(pid: Pid, sig: int) -> None:
    fd = _pidfd(pid)
    try:
        _signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        raise NoProc(pid) from None
    finally:
        os.close(fd)


__all__ = ["KINDS", "Injection", "inject_failure", "resolve_target"]
