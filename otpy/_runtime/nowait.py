"""Non-blocking socket calls that keep the GIL.

CPython releases the GIL around every socket call, even one that cannot
block. When other threads of the process wait for the GIL, each release hands
it to one of them and the caller then waits to get it back: two context
switches around a call that took a microsecond. With 16 threads calling one
server, those handoffs were most of the caller's time (perf: futex waits in
``take_gil``). A call made with MSG_DONTWAIT cannot block, so this module
makes it through ``ctypes.PyDLL``, which keeps the GIL. A read or write that
has to wait still goes through Python's socket methods, which release it.

Linux only, as the rest of the runtime.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct

_libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is held during the call

_send = _libc.send
_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_send.restype = ctypes.c_ssize_t

_recvmsg = _libc.recvmsg
_recvmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_recvmsg.restype = ctypes.c_ssize_t

_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_CMSG_HEADER = struct.Struct("@Nii")  # struct cmsghdr: len, level, type
_CMSG_ALIGN = ctypes.sizeof(ctypes.c_size_t)


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # OSError picks the subclass (BrokenPipeError...)


def send(fd: int, data: bytes) -> int | None:
    """Write what fits of ``data`` now; None if nothing fits (buffer full)."""
    n = _send(fd, data, len(data), _SEND_FLAGS)
    if n >= 0:
        return n
    code = ctypes.get_errno()
    if code in _AGAIN:
        return None
    raise _error(code)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IOVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Receiver:
    """``recvmsg(MSG_DONTWAIT)`` into one fixed buffer, descriptors included.

    The buffer (a bytearray or an mmap) is pinned while exported to ctypes.
    """

    __slots__ = ("_target", "_control", "_control_size", "_iov", "_hdr", "_hdr_ptr")

    def __init__(self, buffer: bytearray | mmap.mmap, control_size: int) -> None:
        self._target = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        self._control = ctypes.create_string_buffer(control_size)
        self._control_size = control_size
        self._iov = _IOVec(ctypes.addressof(self._target), len(buffer))
        self._hdr = _MsgHdr(None, 0, ctypes.pointer(self._iov), 1,
                            ctypes.addressof(self._control), control_size, 0)
        self._hdr_ptr = ctypes.addressof(self._hdr)

    def recv(self, fd: int, fds: list[int]) -> int | None:
        """Bytes read (0: end of stream), None if nothing is there now.
        Descriptors passed alongside are appended to ``fds``."""
        hdr = self._hdr
        hdr.controllen = self._control_size
        n = _recvmsg(fd, self._hdr_ptr, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        if n < 0:
            code = ctypes.get_errno()
            if code in _AGAIN:
                return None
            raise _error(code)
        if hdr.controllen:
            self._take_fds(hdr.controllen, fds)
        return n

    def _take_fds(self, length: int, fds: list[int]) -> None:
        raw = self._control.raw[:length]
        pos = 0
        while pos + _CMSG_HEADER.size <= length:
            size, level, kind = _CMSG_HEADER.unpack_from(raw, pos)
            if size < _CMSG_HEADER.size:
                break
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                size = min(size, length - pos)  # as Python's recvmsg, never past the data
                count = (size - _CMSG_HEADER.size) // 4
                fds.extend(struct.unpack_from(f"{count}i", raw, pos + _CMSG_HEADER.size))
            pos += (size + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
