"""The process API, usable from the program's own process and from any otpy process."""

from __future__ import annotations

import time
from typing import Any, Callable, Literal, overload

from . import reasons, wire
from .process import DEFAULT_SEND_DEADLINE
from .timeouts import check_timeout
from .errors import AlreadyRegistered, NoProc, ProcessExit
from .node import context
from .rows import ProcessRow
from .terms import Down, Exit, Pid, Ref


def self() -> Pid:
    """The calling process's pid (the program's own process is an otpy process too)."""
    return context().pid


def _spawn(fn: Callable[..., Any], args: tuple, kwargs: dict, link: bool,
           mref: Ref | None, name: str | None = None) -> Pid:
    if not callable(fn):
        raise TypeError(f"spawn needs a callable, not {type(fn).__name__}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"a name must be a non-empty str, not {name!r}")
    ctx = context()
    kind, payload = wire.encode_body((fn, args, kwargs))
    pid = ctx.request("spawn", kind, payload, link, mref, ctx.namespace(), name)
    if type(pid) is tuple:  # ("taken", owner)
        raise AlreadyRegistered(name, pid[1])
    return pid


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Pid:
    """Run ``fn(*args, **kwargs)`` in a new OS process; return its pid."""
    return _spawn(fn, args, kwargs, False, None)


def spawn_link(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Pid:
    """As :func:`spawn`, linked to the caller before the new process runs."""
    return _spawn(fn, args, kwargs, True, None)


def spawn_monitor(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Pid, Ref]:
    """As :func:`spawn`, monitored by the caller before the new process runs."""
    ref = Ref.make(context().pid)
    return _spawn(fn, args, kwargs, False, ref), ref


@overload
def spawn_opt(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
              link: bool = False, monitor: Literal[False] = False,
              name: str | None = None) -> Pid: ...


@overload
def spawn_opt(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
              link: bool = False, monitor: Literal[True],
              name: str | None = None) -> tuple[Pid, Ref]: ...


def spawn_opt(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
              link: bool = False, monitor: bool = False,
              name: str | None = None) -> Pid | tuple[Pid, Ref]:
    """As Erlang's spawn_opt: run ``fn(*args, **kwargs)`` in a new process,
    linked to the caller and/or monitored by it, and registered as ``name``
    (in the caller's namespace), all made in one request to the zygote before
    the process runs. Returns the pid, or ``(pid, ref)`` with ``monitor``.
    A taken name raises AlreadyRegistered, and no process is started."""
    ref = Ref.make(context().pid) if monitor else None
    pid = _spawn(fn, tuple(args), dict(kwargs or {}), link, ref, name)
    return pid if ref is None else (pid, ref)


def send(dest: Pid | str, message: Any, *, timeout: float | None = None) -> None:
    """Send ``message`` to a pid or registered name.

    An unknown name raises NoProc; a dead pid drops the message silently. A
    message that cannot be pickled raises SerializationError before anything
    is sent. While the receiver's inbound buffer is full (it is not reading),
    the send waits for room, at most ``timeout`` seconds (default: the
    ``OTPY_SEND_TIMEOUT`` environment variable, 60 s), then raises Timeout;
    nothing is sent then. ``math.inf`` waits for room as long as it takes.
    """
    if timeout is None:
        context().send(dest, message, DEFAULT_SEND_DEADLINE)
    else:
        context().send(dest, message, check_timeout(timeout, "send timeout"))


def receive(timeout: float | None = None, match: Callable[[Any], bool] | None = None) -> Any:
    """The first queued message for which ``match`` is true (any, if None).

    Messages that do not match stay queued, in order. ``timeout`` in seconds:
    Timeout is raised when it expires; 0 looks only at what has arrived;
    None or ``math.inf`` waits as long as it takes.
    ``match`` runs while the mailbox is locked: keep it a plain predicate.
    """
    return context().receive(check_timeout(timeout, "receive timeout"), match)


async def areceive(timeout: float | None = None,
                   match: Callable[[Any], bool] | None = None) -> Any:
    """As :func:`receive`, for asyncio: the task waits, not the thread."""
    from . import aio  # asyncio is imported at its first use, not with otpy

    ctx = context()
    return await aio.receive(ctx, check_timeout(timeout, "receive timeout"), match)


async def asend(dest: Pid | str, message: Any, *, timeout: float | None = None) -> None:
    """As :func:`send`, for asyncio: while the receiver's buffer is full the
    task waits for room (at most ``timeout``: as for ``send``), not the thread."""
    from . import aio

    ctx = context()
    pid = ctx.resolve(dest)
    kind, body = wire.encode(message)
    if timeout is None:
        deadline = DEFAULT_SEND_DEADLINE
    else:
        seconds = check_timeout(timeout, "send timeout")
        deadline = None if seconds is None else time.monotonic() + seconds
    await aio.send_encoded(ctx, pid, kind, body, deadline)


def send_after(dest: Pid | str, message: Any, delay: float) -> Ref:
    """Send ``message`` to ``dest`` after ``delay`` seconds; a name is resolved then."""
    ctx = context()
    if not isinstance(dest, (Pid, str)):
        raise TypeError("destination must be a Pid or a registered name, "
                        f"not {type(dest).__name__}")
    delay = check_timeout(delay, "send_after delay", forever=False)
    kind, body = wire.encode(message)
    ref = Ref.make(ctx.pid)
    ctx.cast_ctrl("timer", ref, dest, ctx.namespace(), delay, kind, body)
    return ref


def cancel_timer(ref: Ref) -> float | None:
    """Cancel a timer: the seconds it had left, or None if it fired or was cancelled."""
    return context().request("cancel_timer", ref)


def link(pid: Pid) -> None:
    """Link the caller and ``pid``: when one exits, the other gets its exit signal.

    At most one link exists per pair. Linking a dead process: a trapping
    caller gets ``Exit(pid, "noproc")``, a non-trapping caller NoProc.
    """
    ctx = context()
    _check_pid(pid)
    if pid.node != ctx.node or not ctx.request("link", pid.serial):
        if ctx.trap:
            with ctx.cond:
                ctx.mailbox.append(Exit(pid, "noproc"))
        else:
            raise NoProc(pid)


def unlink(pid: Pid) -> None:
    """Remove the link between the caller and ``pid``, if any."""
    _check_pid(pid)
    context().request("unlink", pid.serial)


def monitor(target: Pid | str) -> Ref:
    """Monitor a pid or name: one ``Down(ref, pid, reason)`` when it exits.

    A dead or unknown target gives ``Down(ref, target, "noproc")`` at once.
    """
    ctx = context()
    if not isinstance(target, (Pid, str)):
        raise TypeError(f"monitor needs a Pid or a registered name, not {type(target).__name__}")
    ref = Ref.make(ctx.pid)
    ctx.request("monitor", ref, target, ctx.namespace())
    return ref


def demonitor(ref: Ref, flush: bool = False) -> bool:
    """Remove a monitor. With ``flush``, a Down for it already queued is removed too.

    The zygote answers after every Down it sent for ``ref``, and all of them
    travel on the caller's one inbound stream, so when this returns any such
    Down is already in the mailbox.
    """
    ctx = context()
    removed = ctx.request("demonitor", ref)
    if flush:
        ctx.take(lambda m: type(m) is Down and m.ref == ref)
    return removed


def exit(pid: Pid, reason: Any) -> None:  # noqa: A001 - Erlang's name
    """Send an exit signal to ``pid``.

    ``"kill"`` cannot be trapped (the target exits with ``"killed"``);
    ``"normal"`` is ignored by a non-trapping target other than the caller;
    any other reason kills a non-trapping target with that reason and reaches
    a trapping one as ``Exit(caller, reason)``.
    """
    ctx = context()
    _check_pid(pid)
    cls, body = reasons.pack(reason, ctx.pid)
    if pid == ctx.pid and (cls == reasons.KILL or not ctx.trap):
        raise ProcessExit("killed" if cls == reasons.KILL else reason)
    if pid.node == ctx.node:
        ctx.request("exit", pid.serial, cls, body, reasons.describe(reason))


def trap_exit(flag: bool) -> bool:
    """Turn exit trapping on or off for the caller; returns the previous setting."""
    ctx = context()
    previous = ctx.request("trap", bool(flag))
    ctx.trap = bool(flag)
    return previous


def is_alive(pid: Pid) -> bool:
    _check_pid(pid)
    ctx = context()
    return pid.node == ctx.node and ctx.request("is_alive", pid.serial)


def register(name: str, pid: Pid | None = None) -> None:
    """Register ``name`` for ``pid`` (default: the caller) in the current namespace.

    Raises AlreadyRegistered if the name is taken or the process has a name,
    NoProc if the process is dead. The name is released when the owner exits.
    """
    ctx = context()
    if pid is None:
        pid = ctx.pid
    _check_pid(pid)
    ctx.register(name, pid)


def unregister(name: str) -> None:
    ctx = context()
    if not ctx.request("unregister", ctx.namespace(), name):
        raise NoProc(name, f"no process is registered as {name!r}")
    if ctx.name == name:
        ctx.name = None


def whereis(name: str) -> Pid | None:
    return context().whereis(name)


def registered() -> list[str]:
    ctx = context()
    return ctx.request("registered", ctx.namespace())


def processes() -> list[Pid]:
    """Every live process of this node (the program's own included)."""
    return context().request("processes", None)


def process_info(pid: Pid) -> ProcessRow[Pid] | None:
    """What the node knows of a live process, or None once it is dead.

    A ``ProcessRow`` (otpy.ProcessRow: the same keys as the observer's rows):
    pid, name, namespace, os_pid, parent, status ("running"/"waiting"),
    trap_exit, links, monitors (processes it monitors), monitored_by,
    message_queue_len (messages read and not yet received), inbound_bytes
    (bytes sent to it and not yet read), started_at (epoch seconds), memory
    (RSS bytes).
    """
    _check_pid(pid)
    ctx = context()
    if pid.node != ctx.node:
        return None
    info = ctx.request("info", pid.serial)
    if info is not None and pid == ctx.pid:
        info["message_queue_len"] = len(ctx.mailbox)
    return info


def annotate(pid: Pid, **fields: str | int | float | bool | None) -> None:
    """Record what ``pid`` is in the node's tables, for the observer: its kind,
    supervisor, child id, restart count... One-way (no reply is awaited);
    ignored if ``pid`` is dead. Behaviours call this; values must be plain."""
    _check_pid(pid)
    for key, value in fields.items():
        if value is not None and type(value) not in (str, int, float, bool):
            raise TypeError(f"annotation {key!r} must be a str, number, bool or None, "
                            f"not {type(value).__name__}")
    ctx = context()
    if pid.node == ctx.node:
        ctx.cast_ctrl("annotate", pid.serial, fields)


def tally(event: str, detail: str | None = None) -> None:
    """Count an event of the calling process in the node's tables, under the
    process's label (rows.process_label) and ``detail``: a supervisor counts
    its restarts per child this way, and otpy.metrics publishes the counts.
    The counts outlive the process, so keep ``event`` and ``detail`` to a few
    values (never a pid or a session id). One-way: no reply is awaited."""
    if not isinstance(event, str) or not event:
        raise TypeError(f"event must be a non-empty str, not {event!r}")
    if detail is not None and not isinstance(detail, str):
        raise TypeError(f"detail must be a str or None, not {type(detail).__name__}")
    context().cast_ctrl("tally", event, detail)


def make_ref() -> Ref:
    return Ref.make(context().pid)


def _check_pid(pid: Any) -> None:
    if type(pid) is not Pid:
        raise TypeError(f"expected a Pid, not {type(pid).__name__}: {pid!r}")
