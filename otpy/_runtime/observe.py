"""The observation page: how an observer reads a node without calling into it.

The zygote holds the node's tables. When asked, by the signal
``REQUEST_SIGNAL`` (which only the node's OS user, or root, can send), it
writes them as JSON into a memfd, the "page". An observer opens that memfd
through ``/proc/<zygote>/fd`` (the kernel allows this to the same user only)
and reads it. No otpy process other than the zygote is involved, so a busy or
hung process still shows; per-process state and mailbox length come from the
status table, another memfd, read the same way. Nothing is written unless
someone asks: an unobserved node pays nothing, and an observer that crashes
leaves nothing to clean up.

Layout: ``seq`` (u64, odd while a write is under way), ``length`` (u64), then
``length`` bytes of JSON. Readers retry until they see the same even ``seq``
before and after reading the body (a seqlock).
"""

from __future__ import annotations

import os
import signal
import struct

PAGE_NAME = "otpy-observe"
REQUEST_SIGNAL = signal.SIGUSR2
_HEADER = struct.Struct("<QQ")


class Page:
    """The writer's side, in the zygote."""

    def __init__(self) -> None:
        self.fd = os.memfd_create(PAGE_NAME, os.MFD_CLOEXEC)
        self.seq = 0
        self.size = 0
        try:
            os.pwrite(self.fd, _HEADER.pack(0, 0), 0)
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, data: bytes) -> None:
        self.seq += 1
        os.pwrite(self.fd, _HEADER.pack(self.seq, 0), 0)
        need = _HEADER.size + len(data)
        if need > self.size:
            os.ftruncate(self.fd, need)
            self.size = need
        os.pwrite(self.fd, data, _HEADER.size)
        self.seq += 1
        os.pwrite(self.fd, _HEADER.pack(self.seq, len(data)), 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def page_seq(fd: int) -> int:
    """How many writes have completed (times two): changes when a new page is out."""
    return _HEADER.unpack(os.pread(fd, _HEADER.size, 0))[0]


def read_page(fd: int, attempts: int = 100) -> tuple[int, bytes] | None:
    """The last complete page and its seq, or None if the zygote never wrote one."""
    for _ in range(attempts):
        seq, length = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if seq % 2:
            continue
        if seq == 0:
            return None
        data = os.pread(fd, length, _HEADER.size)
        if page_seq(fd) == seq and len(data) == length:
            return seq, data
    return None
