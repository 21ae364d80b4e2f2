"""Failure injection inside a target process: the runtime side of
``otpy.testing.inject_failure`` for the faults a process must apply to itself
(slow, partition, corrupt, memory, fds).

A fault travels as a control frame, ``("fault", token, op, kind, opts,
reply_to)``, that the injecting process writes into the target's inbound
stream like any other frame. The target's reader hands it here
(``ProcessContext._decode_ctrl``); from then on, and only while a fault is
active, a few methods of that one ``ProcessContext`` instance are replaced
by filters:

- ``_apply`` (filing what was read): control items are applied in stream
  order, so a message sent after the fault was acknowledged is affected and
  one sent before is not; "slow" delays each message, "partition" drops
  incoming messages;
- ``send_encoded``: "partition" drops outgoing messages;
- ``reader`` (the frame reassembler): "corrupt" damages the next messages'
  bytes before they are decoded, so the receiver gets the runtime's own
  ``BadMessage``.

When the last fault is healed the instance attributes are deleted and the
class's methods are back: with no fault injected the message path is the
same code as without this module. The target acknowledges each control (with
"ok" or the error) through a zero-delay timer of the zygote, which needs no
request/reply and so is safe from inside the reader.
"""

from __future__ import annotations

import os
import pickle
import resource
import threading
import time
from typing import Any

from . import process, wire
from .terms import Down, Exit, Pid, Ref

TAG = "fault"
ACK = "$otpy_fault"  # (ACK, token, "ok" | error text): the target's answer
KINDS = ("slow", "partition", "corrupt", "memory", "fds")
MEMORY_LIMIT_MB = 1024  # a leak stops there unless told otherwise
LEAK_STEP = 0.1  # a leak allocates rate * LEAK_STEP megabytes every LEAK_STEP seconds
_MB = 1024 * 1024
_OPTIONS = {
    "slow": {"delay"},
    "partition": {"peers", "drop_in"},
    "corrupt": {"count"},
    "memory": {"megabytes", "rate", "limit"},
    "fds": set(),
}


def check(kind: str, opts: dict) -> None:
    """TypeError/ValueError naming what is wrong with a fault's options."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = set(opts) - _OPTIONS[kind]
    if unknown:
        raise TypeError(f"fault {kind!r} takes no option(s) {', '.join(sorted(unknown))}")
    if kind == "slow":
        delay = opts.get("delay")
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay <= 0:
            raise ValueError("fault 'slow' needs delay= a positive number of seconds, "
                             f"not {delay!r}")
    elif kind == "corrupt":
        count = opts.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"fault 'corrupt' needs count= a positive int, not {count!r}")
    elif kind == "memory":
        mb, rate = opts.get("megabytes"), opts.get("rate")
        if (mb is None) == (rate is None):
            raise ValueError("fault 'memory' needs exactly one of megabytes= or rate=")
        for name in ("megabytes", "rate", "limit"):
            value = opts.get(name)
            if value is not None and (not isinstance(value, (int, float))
                                      or isinstance(value, bool) or value <= 0):
                raise ValueError(f"fault 'memory' needs {name}= a positive number, not {value!r}")
    elif kind == "partition":
        peers = opts.get("peers")
        if peers is not None and not all(type(p) is int for p in peers):
            raise TypeError("fault 'partition' peers= must be process serials")


def send(ctx: process.ProcessContext, pid: Pid, term: tuple) -> None:
    """Write a fault control frame into ``pid``'s inbound stream (the class's
    method: a partition of the sender itself must not swallow it)."""
    process.ProcessContext.send_encoded(ctx, pid, wire.CTRL, pickle.dumps(term, 5))


class Control:
    """A fault frame, filed in stream order by the ``_apply`` filter."""

    __slots__ = ("token", "op", "kind", "opts", "reply_to")

    def __init__(self, token: Ref, op: str, kind: str, opts: dict, reply_to: Pid | None) -> None:
        self.token = token
        self.op = op
        self.kind = kind
        self.opts = opts
        self.reply_to = reply_to


def received(ctx: process.ProcessContext, term: tuple) -> Control:
    """Called by the reader for a fault frame: make sure the filter that
    applies it in order is installed, and hand the item back to be filed."""
    _, token, op, kind, opts, reply_to = term
    state = ctx.__dict__.get("_faults")
    if state is None:
        state = ctx.__dict__["_faults"] = _Faults(ctx)
    state.install()
    return Control(token, op, kind, opts, reply_to)


_NOTICES = (process._Reply, process._Dead, process._Fatal, Control, Exit, Down)


class _Faults:
    """The faults active in one process, and the filters they need."""

    def __init__(self, ctx: process.ProcessContext) -> None:
        self.ctx = ctx
        self.active: dict[Ref, _Fault] = {}
        self.delay = 0.0  # slow: seconds added to each message received
        self.drop_in = False  # partition: drop every incoming message
        self.drop_to: set[int] | None = set()  # partition: serials (None: all) not sent to
        self.corrupt = 0  # corrupt: how many more messages to damage
        self.local = threading.local()  # .self_send: filing a message sent to itself

    # -- installing the filters ---------------------------------------------------

    def install(self) -> None:
        d = self.ctx.__dict__  # instance attributes shadow the class's methods
        if "_apply" not in d:
            d["_apply"] = self.apply

    def uninstall(self) -> None:
        d = self.ctx.__dict__
        for name in ("_apply", "send_encoded"):
            d.pop(name, None)
        reader = d.get("reader")
        if type(reader) is _CorruptingReader:
            d["reader"] = reader.inner

    def _refresh(self) -> None:
        """Recompute what the filters do from the active faults."""
        self.delay = sum(f.opts["delay"] for f in self.active.values() if f.kind == "slow")
        parts = [f for f in self.active.values() if f.kind == "partition"]
        self.drop_in = any(f.opts.get("drop_in", True) for f in parts)
        drop_to: set[int] | None = set()
        for f in parts:
            peers = f.opts.get("peers")
            drop_to = None if peers is None or drop_to is None else drop_to | set(peers)
        self.drop_to = drop_to
        d = self.ctx.__dict__
        if parts and "send_encoded" not in d:
            d["send_encoded"] = self.send_encoded
        elif not parts:
            d.pop("send_encoded", None)
        self.corrupt = sum(f.remaining for f in self.active.values() if f.kind == "corrupt")
        reader = d.get("reader")
        if self.corrupt and type(reader) is not _CorruptingReader:
            d["reader"] = _CorruptingReader(reader, self)
        elif not self.corrupt and type(reader) is _CorruptingReader:
            d["reader"] = reader.inner

    # -- the filters --------------------------------------------------------------

    def apply(self, items: list) -> None:
        """``ctx._apply`` while faults may be active (the process's lock is held)."""
        if getattr(self.local, "self_send", False):  # never crosses a partition
            process.ProcessContext._apply(self.ctx, items)
            return
        out = []
        for item in items:
            if type(item) is Control:
                self.control(item)
            elif isinstance(item, _NOTICES):
                out.append(item)
            elif self.drop_in:
                continue  # partitioned: the message is lost
            else:
                if self.delay:
                    time.sleep(self.delay)  # a slow process: every message costs this much
                out.append(item)
        process.ProcessContext._apply(self.ctx, out)
        if not self.active:
            self.uninstall()

    def send_encoded(self, pid: Pid, kind: int, body: bytes, *rest: Any) -> None:
        """``ctx.send_encoded`` while partitioned: drop what crosses the partition
        (``rest``: whatever else the class's method takes, passed through)."""
        if pid == self.ctx.pid:
            self.local.self_send = True
            try:
                process.ProcessContext.send_encoded(self.ctx, pid, kind, body, *rest)
            finally:
                self.local.self_send = False
            return
        drop_to = self.drop_to
        if kind != wire.CTRL and (drop_to is None or pid.serial in drop_to):
            return
        process.ProcessContext.send_encoded(self.ctx, pid, kind, body, *rest)

    def corrupted(self, frames: list) -> list:
        """Damage the next messages' first byte (a pickle then fails to load)."""
        for i, (kind, body) in enumerate(frames):
            if self.corrupt and kind in (wire.MSG, wire.MSG_DILL):
                frames[i] = (kind, b"\xff" + bytes(body[1:]))
                self.corrupt -= 1
                for fault in self.active.values():
                    if fault.kind == "corrupt" and fault.remaining:
                        fault.remaining -= 1
                        if not fault.remaining:
                            del self.active[fault.token]
                        break
        if not self.corrupt:
            self._refresh()
        return frames

    # -- applying a control -------------------------------------------------------

    def control(self, item: Control) -> None:
        try:
            if item.op == "inject":
                fault = _Fault(item.token, item.kind, item.opts)
                fault.start()
                self.active[item.token] = fault
            elif item.op == "heal":
                if item.token in self.active:
                    self.active.pop(item.token).stop()
            self._refresh()
            result = "ok"
        except Exception as exc:  # the injector is told; the process carries on
            self._refresh()
            result = f"{type(exc).__name__}: {exc}"
        if item.reply_to is not None:
            ack(self.ctx, item.reply_to, (ACK, item.token, result))


def ack(ctx: process.ProcessContext, to: Pid, term: tuple) -> None:
    """Send ``term`` to ``to`` through the zygote (a zero-delay timer): one
    write to the control socket, no reply to wait for."""
    kind, body = wire.encode(term)
    ctx.cast_ctrl("timer", Ref.make(ctx.pid), to, "", 0.0, kind, body)


class _Fault:
    """One active fault; memory and fds hold what they took until stopped."""

    def __init__(self, token: Ref, kind: str, opts: dict) -> None:
        self.token = token
        self.kind = kind
        self.opts = opts
        self.remaining = opts.get("count", 1) if kind == "corrupt" else 0
        self.held: list[Any] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.saved_limit: tuple[int, int] | None = None

    def start(self) -> None:
        if self.kind == "memory":
            if self.opts.get("megabytes") is not None:
                self.held.append(_touched(self.opts["megabytes"]))
            else:
                self.thread = threading.Thread(target=self._leak, name="otpy-leak", daemon=True)
                self.thread.start()
        elif self.kind == "fds":
            self._exhaust()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(1.0)
        if self.kind == "fds":
            for fd in self.held:
                os.close(fd)
            if self.saved_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, self.saved_limit)
        self.held.clear()

    def _leak(self) -> None:
        rate = self.opts["rate"]
        limit = self.opts.get("limit") or MEMORY_LIMIT_MB
        taken = 0.0
        while not self.stopping.wait(LEAK_STEP) and taken < limit:
            step = min(rate * LEAK_STEP, limit - taken)
            self.held.append(_touched(step))
            taken += step

    def _exhaust(self) -> None:
        """Lower the soft limit to just above the highest fd open, then fill
        every free number below it: the next open fails with EMFILE."""
        self.saved_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, self.saved_limit[1]))
        try:
            while True:
                self.held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass


def _touched(megabytes: float) -> bytes:
    """``megabytes`` of memory actually resident (every page written)."""
    return b"\xa5" * int(megabytes * _MB)


class _CorruptingReader:
    """Wraps a FrameReader while messages are to be corrupted."""

    __slots__ = ("inner", "faults")

    def __init__(self, inner: wire.FrameReader, faults: _Faults) -> None:
        self.inner = inner
        self.faults = faults

    def read(self, sock: Any, flags: int = 0) -> bool:
        return self.inner.read(sock, flags)

    def read_nowait(self, sock: Any, keep_gil: bool = False) -> bool | None:
        return self.inner.read_nowait(sock, keep_gil)

    def frames(self) -> list:
        return self.faults.corrupted(self.inner.frames())

    def close(self) -> None:
        self.inner.close()
