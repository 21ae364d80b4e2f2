"""Frames on the wire, and how terms become bytes.

Every process has one inbound byte stream (a Unix stream socket). All its
senders and the zygote write whole frames into it; the process blocks on one
``recvmsg``. A frame is a 5-byte header (body length, kind) and a body. A
blocking ``send`` of up to ``INLINE_MAX`` bytes is queued by the kernel as a
single buffer, so frames from concurrent writers never interleave; a bigger
body goes into a memfd that travels with the header as SCM_RIGHTS, which keeps
the frame atomic at any size.
"""

from __future__ import annotations

import importlib
import io
import mmap
import os
import pickle
import socket
import struct
import sys
import types
from collections import deque
from typing import Any

import dill

from .errors import SerializationError

HEADER = struct.Struct("<IB")

# kinds
MSG = 1  # body: pickle of a message
MSG_DILL = 2  # body: dill of a message (lambdas, closures, local classes)
CTRL = 3  # body: pickle of a runtime tuple (requests, replies, notices)
CTRL_FD = 4  # as CTRL, with a descriptor passed alongside: body is (fd, bytes)
IN_FD = 0x80  # flag: the body is in the memfd passed with the header
HAS_FD = 0x40  # flag: a descriptor travels with this frame (CTRL_FD)

# Linux queues a blocking unix-stream send of up to ~36 KiB as one buffer
# (half the send buffer, capped at one head page plus 32 KiB of fragments);
# staying below that keeps each frame atomic among concurrent writers.
INLINE_MAX = 32 * 1024
MAX_BODY = 2**32 - 1
SEND_BUFFER = 4 * 1024 * 1024
READ_SIZE = 256 * 1024
_ANC_SIZE = socket.CMSG_SPACE(64 * 4)

_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads


def encode(term: Any) -> tuple[int, bytes]:
    """Serialize ``term``: pickle (protocol 5) first, dill where pickle cannot.

    Raises SerializationError naming the type when neither can; the caller
    has sent nothing at that point.
    """
    try:
        return MSG, _pickle_dumps(term, 5)
    except Exception:
        pass
    try:
        return MSG_DILL, dill.dumps(term, protocol=5, recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {type(term).__module__}.{type(term).__qualname__}: {exc}"
        ) from exc


class _BodyPickler(dill.Pickler):
    """dill, except that imported modules travel by reference.

    dill ships a module that is not under the interpreter's prefix by value,
    whole ``__dict__`` included (so an editable install or a test helper module
    would be copied, and fail on its first unpicklable global). Every process
    of a node can import what the program imported, so a name is enough.
    """

    dispatch = dill.Pickler.dispatch.copy()


def _save_module(pickler: Any, module: types.ModuleType) -> None:
    if module.__name__ == "__main__" or sys.modules.get(module.__name__) is not module:
        _dill_save_module(pickler, module)
    else:
        pickler.save_reduce(importlib.import_module, (module.__name__,), obj=module)


_dill_save_module = _BodyPickler.dispatch[types.ModuleType]
_BodyPickler.dispatch[types.ModuleType] = _save_module


def encode_body(fn_args: Any) -> tuple[int, bytes]:
    """Serialize a process body with dill, which ships ``__main__`` functions,
    lambdas and closures by value (the zygote may predate their definition).

    If that fails (a ``__main__`` function whose globals hold something
    unpicklable), plain pickle sends it by reference, which works when the
    function existed before the node started.
    """
    try:
        out = io.BytesIO()
        _BodyPickler(out, protocol=5, recurse=True).dump(fn_args)
        return MSG_DILL, out.getvalue()
    except Exception as exc:
        try:
            return MSG, _pickle_dumps(fn_args, 5)
        except Exception:
            pass
        fn = fn_args[0]
        raise SerializationError(
            f"cannot serialize process body {getattr(fn, '__qualname__', fn)!r} "
            f"or its arguments: {exc}"
        ) from exc


def decode(kind: int, body: Any) -> Any:
    if kind == MSG_DILL:
        return dill.loads(body)
    return _pickle_loads(body)


def send_frame(sock: socket.socket, kind: int, body: bytes | bytearray | memoryview) -> None:
    """Write one frame; blocks while the receiver's buffer is full."""
    size = len(body)
    if size <= INLINE_MAX:
        sock.sendall(HEADER.pack(size, kind) + body)
        return
    if size > MAX_BODY:
        raise SerializationError(f"message of {size} bytes exceeds the {MAX_BODY}-byte limit")
    fd = os.memfd_create("otpy-frame", os.MFD_CLOEXEC)
    try:
        view = memoryview(body)
        written = 0
        while written < size:
            written += os.write(fd, view[written:])
        socket.send_fds(sock, [HEADER.pack(size, kind | IN_FD)], [fd])
    finally:
        os.close(fd)


class FrameReader:
    """Reassembles frames from a stream; collects fds passed alongside."""

    __slots__ = ("buf", "fds", "_chunk", "_view")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fds: deque[int] = deque()
        # One reused receive buffer: a fresh 256 KiB bytes per recvmsg cost an
        # mmap/mremap/munmap round of syscalls per message (seen in strace).
        self._chunk = bytearray(READ_SIZE)
        self._view = memoryview(self._chunk)

    def read(self, sock: socket.socket, flags: int = 0) -> bool:
        """One ``recvmsg``. False on end of stream. Raises BlockingIOError on timeout."""
        n, anc, _flags, _addr = sock.recvmsg_into((self._chunk,), _ANC_SIZE, flags)
        for level, typ, payload in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                k = len(payload) - len(payload) % 4
                self.fds.extend(struct.unpack(f"{k // 4}i", payload[:k]))
        if not n:
            return False
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
                fd = self.fds.popleft()
                try:
                    body = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
                finally:
                    os.close(fd)
                out.append((kind & ~IN_FD, body))
                continue
            if end - pos - 5 < size:
                break
            body = bytes(buf[pos + 5 : pos + 5 + size])
            pos += 5 + size
            if kind & HAS_FD:
                # fds are taken in stream order, so they pair with their frames
                out.append((CTRL_FD, (self.fds.popleft(), body)))
            else:
                out.append((kind, body))
        if pos:
            del buf[:pos]
        return out

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())
