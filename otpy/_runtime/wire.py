"""Frames on the wire, and how terms become bytes.

Every process has one inbound byte stream (a Unix stream socket). All its
senders and the zygote write whole frames into it; the process blocks on one
``recvmsg``. A frame is a 5-byte header (body length, kind) and a body. A
blocking ``send`` of up to ``INLINE_MAX`` bytes is queued by the kernel as a
single buffer, so frames from concurrent writers never interleave; a bigger
body goes into a memfd that travels with the header as SCM_RIGHTS, which keeps
the frame atomic at any size. Such a body is outside the stream's buffer, so
each sender counts its own (``BigFrames``) against as much again.
"""

from __future__ import annotations

import fcntl
import io
import mmap
import os
import pickle
import select
import socket
import struct
import sys
import threading
import types
from collections import deque
from typing import Any

from . import nowait
from .errors import SerializationError

HEADER = struct.Struct("<IB")

# kinds
MSG = 1  # body: pickle of a message
MSG_DILL = 2  # body: dill of a message (lambdas, closures, local classes)
CTRL = 3  # body: pickle of a runtime tuple (requests, replies, notices)
CTRL_FD = 4  # as CTRL, with a descriptor passed alongside: body is (fd, bytes)
IN_FD = 0x80  # flag: the body is in the memfd passed with the header
HAS_FD = 0x40  # flag: a descriptor travels with this frame (CTRL_FD)
ACKED = 0x20  # flag, with IN_FD: a second descriptor, where the receiver acknowledges it

# Linux queues a blocking unix-stream send of up to ~36 KiB as one buffer
# (half the send buffer, capped at one head page plus 32 KiB of fragments);
# staying below that keeps each frame atomic among concurrent writers.
INLINE_MAX = 32 * 1024
MAX_BODY = 2**32 - 1
SEND_BUFFER = 4 * 1024 * 1024
BIG_UNREAD_MAX = 2 * SEND_BUFFER  # what a stream buffers (Linux doubles SO_SNDBUF)
BIG_UNREAD_FRAMES = 64  # and at most this many: each holds descriptors in flight
ACK = struct.Struct("<Q")
READ_SIZE = 256 * 1024
_ANC_SIZE = socket.CMSG_SPACE(64 * 4)

_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads


def encode(term: Any) -> tuple[int, bytes]:
    """Serialize ``term``: pickle (protocol 5) first, dill where pickle cannot,
    or where the term refers to a ``__main__`` class or function that the
    receiver cannot import (defined after the node started): those travel by
    value.

    Raises SerializationError naming the type of the part that cannot be
    serialized; the caller has sent nothing at that point.
    """
    try:
        data = _pickle_dumps(term, 5)
    except Exception:
        return _encode_by_value(term)
    # The hot path pays one substring search; only a term whose pickle names
    # __main__ is looked at more closely.
    if b"__main__" in data and _refers_to_new_main(term):
        return _encode_by_value(term)
    return MSG, data


# ---- __main__ objects the receiver cannot import ---------------------------------

# What __main__ held when the node started: every process of the node is
# forked from the zygote, forked then, so it can import exactly these by name.
_main_at_start: dict[str, Any] = {}
_MISSING = object()


def note_main() -> None:
    """Remember what ``__main__`` holds now (node start calls this before forking)."""
    _main_at_start.clear()
    main = sys.modules.get("__main__")
    if main is not None:
        _main_at_start.update(vars(main))


def _importable_main(obj: Any) -> bool:
    """Whether a ``__main__`` class or function existed, as this very object,
    when the node started (so every process finds it by name)."""
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str) or "<" in qualname:
        return False
    first, _, rest = qualname.partition(".")
    found = _main_at_start.get(first, _MISSING)
    for part in rest.split(".") if rest else ():
        found = getattr(found, part, _MISSING)
    return found is obj


class _NewMain(Exception):
    pass


class _MainFinder(pickle.Pickler):
    """Pickles only to find a ``__main__`` class or function that must travel by value."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) \
                and getattr(obj, "__module__", None) == "__main__" and not _importable_main(obj):
            raise _NewMain
        return NotImplemented


def _refers_to_new_main(term: Any) -> bool:
    try:
        _MainFinder(io.BytesIO(), 5).dump(term)
    except _NewMain:
        return True
    except Exception:
        return True  # let dill try, and name the culprit if it cannot
    return False


def _encode_by_value(term: Any) -> tuple[int, bytes]:
    try:
        return MSG_DILL, _by_value().dumps_message(term)
    except Exception as exc:
        culprit, path = _culprit(term)
        where = "".join(f"[{key!r}]" for key in path)
        where = f" (at {where} of the {_type_name(term)} sent)" if path else ""
        raise SerializationError(f"cannot serialize {_type_name(culprit)}{where}: {exc}") from exc


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _serializable(obj: Any) -> bool:
    try:
        _pickle_dumps(obj, 5)
        return True
    except Exception:
        pass
    try:
        _by_value().dumps_message(obj)
        return True
    except Exception:
        return False


def _culprit(term: Any, depth: int = 8) -> tuple[Any, list]:
    """The innermost part of a container that cannot be serialized, and its path."""
    path: list = []
    while depth:
        depth -= 1
        if type(term) in (tuple, list):
            items: Any = enumerate(term)
        elif type(term) is dict:
            items = term.items()
        else:
            break
        for key, value in items:
            if not _serializable(value):
                path.append(key)
                term = value
                break
        else:
            break
    return term, path


def encode_body(fn_args: Any) -> tuple[int, bytes]:
    """Serialize a process body: plain pickle (by reference) when it refers
    to nothing of ``__main__``, which every process can import by name and
    needs no dill to read; else dill, which ships ``__main__`` functions,
    lambdas and closures by value (the zygote may predate their definition).

    If dill fails (a ``__main__`` function whose globals hold something
    unpicklable), plain pickle sends it by reference, which works when the
    function existed before the node started.
    """
    try:
        data = _pickle_dumps(fn_args, 5)
    except Exception:
        data = None
    if data is not None and b"__main__" not in data:
        return MSG, data
    try:
        return MSG_DILL, _by_value().dumps_body(fn_args)
    except Exception as exc:
        if data is not None:
            return MSG, data
        fn = fn_args[0]
        raise SerializationError(
            f"cannot serialize process body {getattr(fn, '__qualname__', fn)!r} "
            f"or its arguments: {exc}"
        ) from exc


def _by_value() -> types.ModuleType:
    """The dill side of the wire (by_value.py), imported at first use: dill
    costs a process about 25 ms and 1.6 MiB, and a program whose messages
    and process bodies pickle never needs it."""
    from . import by_value

    return by_value


def load_by_value() -> None:
    """Import dill now (the zygote, before it forks a body that needs it)."""
    _by_value()


def decode(kind: int, body: Any) -> Any:
    if kind == MSG_DILL:
        return _by_value().loads(body)
    return _pickle_loads(body)


# ---- what can be read of a message that cannot be decoded --------------------------

class Undecodable:
    """Stands, in a salvaged message, for a part that could not be decoded;
    ``what`` names its type (or the class or function that was missing)."""

    what = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<undecodable {self.what}>"


class _Salvager(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, made to carry on past what fails: a missing
    class or function becomes an Undecodable subclass, an object whose
    reconstruction raises becomes an Undecodable instance. Slow, and only
    used on a message that failed to decode."""

    dispatch = pickle._Unpickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, data: Any) -> None:
        super().__init__(io.BytesIO(data))
        self.problems: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("__builtin__", "__main__"):
            return sys.modules["__main__"].__dict__  # as dill's unpickler does
        if (module, name) == ("__builtin__", "NoneType"):
            return type(None)
        if module == "dill.dill":
            module = "dill._dill"
        try:
            return super().find_class(module, name)
        except BaseException as exc:  # an import that raises SystemExit too
            self.problems.append(f"{module}.{name} ({type(exc).__name__}: {exc})")
            return type(name, (Undecodable,), {"what": f"{module}.{name}"})

    def _broken(self, obj: Any, exc: BaseException) -> Undecodable:
        what = getattr(obj, "__qualname__", None) or _type_name(obj)
        module = getattr(obj, "__module__", None)
        if module and module != "builtins" and isinstance(what, str):
            what = f"{module}.{what}"
        self.problems.append(f"{what} ({type(exc).__name__}: {exc})")
        stand_in = Undecodable()
        stand_in.what = str(what)
        return stand_in


def _guarded(opcode: bytes, consumed: int) -> None:
    """Wrap an opcode that pops ``consumed`` items and pushes one result."""
    original = _Salvager.dispatch[opcode[0]]

    def load(self: _Salvager) -> None:
        stack = self.stack
        depth = len(stack)
        culprit = stack[depth - consumed] if depth >= consumed else None
        try:
            original(self)
        except BaseException as exc:  # SystemExit from a __reduce__ too
            del stack[max(0, depth - consumed):]
            stack.append(self._broken(culprit, exc))

    _Salvager.dispatch[opcode[0]] = load


for _op, _n in ((pickle.REDUCE, 2), (pickle.BUILD, 2), (pickle.NEWOBJ, 2),
                (pickle.NEWOBJ_EX, 3)):
    _guarded(_op, _n)


def salvage(data: bytes) -> tuple[Any, list[str]]:
    """What can be read of a message that failed to decode: the term with
    each part that failed replaced by an Undecodable, and what failed (as
    text). ``(None, problems)`` if even that is impossible."""
    salvager = _Salvager(data)
    try:
        term = salvager.load()
    except BaseException as exc:
        return None, salvager.problems + [f"{type(exc).__name__}: {exc}"]
    return term, salvager.problems


def send_frame(sock: socket.socket, kind: int, body: bytes | bytearray | memoryview) -> None:
    """Write one frame; blocks while the receiver's buffer is full."""
    size = len(body)
    if size <= INLINE_MAX:
        sock.sendall(HEADER.pack(size, kind) + body)
        return
    fd = _memfd(body)
    try:
        socket.send_fds(sock, [HEADER.pack(size, kind | IN_FD)], [fd])
    finally:
        os.close(fd)


def try_send_frame(sock: socket.socket, kind: int, body: bytes | bytearray | memoryview,
                   keep_gil: bool = False, big: "BigFrames | None" = None) -> bool:
    """Write one frame without blocking: True if written, False if the
    receiver's buffer is full (then nothing was written). ``keep_gil``: a
    frame that fits is written keeping the GIL (nowait.py), for a process
    whose threads would otherwise hand the GIL around at each send. ``big``:
    this sender's big frames to that receiver (needed for a big body), full
    once BIG_UNREAD_MAX bytes or BIG_UNREAD_FRAMES frames are unread.

    All or nothing: a frame of up to INLINE_MAX bytes (or a big frame's
    5-byte header with its memfd) is queued by the kernel as one buffer, so a
    non-blocking send either takes all of it or fails with EAGAIN.
    """
    size = len(body)
    if size <= INLINE_MAX:
        data = HEADER.pack(size, kind) + body
        if keep_gil:
            sent = nowait.send(sock.fileno(), data)
            if sent is None:
                return False
        else:
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
        if sent != len(data):  # never seen; finish it rather than tear the frame
            sock.sendall(memoryview(data)[sent:])
        return True
    if big is None:
        raise ValueError("a big frame needs its sender's BigFrames for that receiver")
    if not big.room(size):
        if _hung_up(sock):  # (nothing else would tell: no write is tried)
            raise BrokenPipeError("the receiver is gone")
        return False
    fd = _memfd(body)
    try:
        with big.lock:  # (the count and the send together: another thread may close it)
            if big.closed:  # dropped meanwhile: the caller tries again with the new one
                return False
            try:
                # (socket.send_fds ignores its flags argument: sendmsg it is)
                sock.sendmsg([HEADER.pack(size, kind | IN_FD | ACKED)],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               struct.pack("2i", fd, big.ack_write.fileno()))],
                             socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            big.size += size
            big.frames += 1
        return True
    finally:
        os.close(fd)


class BigFrames:
    """One sender's big frames to one receiver, sent and not yet read.

    A big frame's body is in a memfd, outside the receiver's stream buffer,
    so the buffer's bound (a sender waits once 8 MiB are unread) would not
    see it: a fast sender could pile gigabytes on a receiver that does not
    read. So the sender keeps, per receiver, a socketpair: each big frame
    carries a copy of one end, into which the receiver writes the body's
    size as it reads the frame (``FrameReader.frames``); the sender reads
    those sizes back from the other end. A sender with BIG_UNREAD_MAX bytes
    or BIG_UNREAD_FRAMES frames of big bodies unread by that receiver waits
    as for a full buffer, on that end (a body over BIG_UNREAD_MAX goes when
    none is unread). A bound per sender: each counts only its own. Two
    descriptors per receiver, and one in flight per unread frame (besides
    its memfd)."""

    __slots__ = ("lock", "ack_read", "ack_write", "size", "frames", "closed", "_partial")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # (a process's threads may send to one receiver)
        self.ack_read, self.ack_write = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ack_read.setblocking(False)
        self.size = 0  # bytes of big bodies sent and not acknowledged
        self.frames = 0
        self.closed = False
        self._partial = b""

    def room(self, size: int) -> bool:
        """Whether a body of ``size`` may be sent now (True once closed: there
        is nothing to wait for on this one)."""
        with self.lock:
            self._take_acks()
            return self.closed or not self.frames or (self.size + size <= BIG_UNREAD_MAX
                                                      and self.frames < BIG_UNREAD_FRAMES)

    def unread(self) -> bool:
        with self.lock:
            self._take_acks()
            return self.frames > 0

    def watched(self) -> int | None:
        """A copy of the end the receiver's acknowledgements arrive on (to
        wait on; the caller's to close); None once closed."""
        with self.lock:
            return None if self.closed else os.dup(self.ack_read.fileno())

    def _take_acks(self) -> None:
        if self.closed:
            return
        while True:
            try:
                data = self.ack_read.recv(64 * ACK.size)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            data = self._partial + data
            whole = len(data) - len(data) % ACK.size
            self._partial = data[whole:]
            for (n,) in ACK.iter_unpack(data[:whole]):
                self.size -= n
                self.frames -= 1

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.ack_read.close()
                self.ack_write.close()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the stream's receiver is gone (its end closed)."""
    poller = select.poll()
    poller.register(sock, 0)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def acknowledge(ack: int, size: int) -> None:
    """Tell a big frame's sender it has been read (BigFrames), and close the
    descriptor: never waits, never raises (a sender gone reads no more)."""
    try:
        with socket.socket(fileno=ack) as sock:
            sock.send(ACK.pack(size), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError:
        pass


def _memfd(body: bytes | bytearray | memoryview) -> int:
    """A memfd holding ``body`` (a big frame travels as one)."""
    size = len(body)
    if size > MAX_BODY:
        raise SerializationError(f"message of {size} bytes exceeds the {MAX_BODY}-byte limit")
    fd = os.memfd_create("otpy-frame", os.MFD_CLOEXEC)
    try:
        view = memoryview(body)
        written = 0
        while written < size:
            written += os.write(fd, view[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


_SIOCOUTQ = 0x5411


def unread_bytes(sock: socket.socket) -> int:
    """Bytes written to a stream socket's peer and not read yet (0 if unknown)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def receive_buffer() -> mmap.mmap:
    """A READ_SIZE receive buffer whose pages exist only once a read fills
    them: a bytearray is zeroed when made, which cost every process 256 KiB
    of its own memory, however small the messages it gets. Private, as the
    bytearray was: an anonymous mmap is shared with forks by default, and a
    fork's reads (a second node's zygote, say) would land in this buffer."""
    return mmap.mmap(-1, READ_SIZE, flags=mmap.MAP_PRIVATE)


def above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy numbered 3 or above if it took the place
    of a closed stdin, stdout or stderr (a program started with ``>&-``): a
    write meant for a standard stream must never land in an otpy stream."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


class FrameReader:
    """Reassembles frames from a stream; collects fds passed alongside
    (close-on-exec, as every descriptor otpy holds)."""

    __slots__ = ("buf", "fds", "_chunk", "_view", "_receiver")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fds: list[int] = []  # rare; a list costs 56 bytes where a deque costs 760
        # One reused receive buffer: a fresh 256 KiB bytes per recvmsg cost an
        # mmap/mremap/munmap round of syscalls per message (seen in strace).
        self._chunk = receive_buffer()
        self._view = memoryview(self._chunk)
        self._receiver: nowait.Receiver | None = None  # made when first read keeping the GIL

    def read(self, sock: socket.socket, flags: int = 0) -> bool:
        """One ``recvmsg``. False on end of stream. Raises BlockingIOError on timeout."""
        n, anc, _flags, _addr = sock.recvmsg_into((self._chunk,), _ANC_SIZE,
                                                  flags | socket.MSG_CMSG_CLOEXEC)
        for level, typ, payload in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                k = len(payload) - len(payload) % 4
                self.fds.extend(struct.unpack(f"{k // 4}i", payload[:k]))
        if not n:
            return False
        self.buf += self._view[:n]
        return True

    def read_nowait(self, sock: socket.socket, keep_gil: bool = False) -> bool | None:
        """One ``recvmsg`` that does not block: False on end of stream, None if
        nothing is there now. ``keep_gil``: made keeping the GIL (nowait.py),
        which costs a single-threaded process about half a microsecond more."""
        if not keep_gil:
            try:
                return self.read(sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
        receiver = self._receiver
        if receiver is None:
            receiver = self._receiver = nowait.Receiver(self._chunk, _ANC_SIZE)
        n = receiver.recv(sock.fileno(), self.fds)
        if not n:
            return n if n is None else False
        self.buf += self._view[:n]
        return True

    def frames(self) -> list[tuple[int, Any]]:
        """Complete frames so far, as (kind, body); bodies are bytes or mmaps."""
        out = []
        buf = self.buf
        pos = 0
        end = len(buf)
        while end - pos >= 5:
            size, kind = HEADER.unpack_from(buf, pos)
            if kind & IN_FD:
                pos += 5
                fd = self.fds.pop(0)
                if kind & ACKED:
                    acknowledge(self.fds.pop(0), size)
                try:
                    body = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
                finally:
                    os.close(fd)
                out.append((kind & ~(IN_FD | ACKED), body))
                continue
            if end - pos - 5 < size:
                break
            body = bytes(buf[pos + 5 : pos + 5 + size])
            pos += 5 + size
            if kind & HAS_FD:
                # fds are taken in stream order, so they pair with their frames
                out.append((CTRL_FD, (above_stdio(self.fds.pop(0)), body)))
            else:
                out.append((kind, body))
        if pos:
            del buf[:pos]
        return out

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop(0))
