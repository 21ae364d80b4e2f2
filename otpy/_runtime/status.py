"""A shared-memory table every process of a node can read without a syscall.

It lives in a memfd created before the zygote forks, so every process maps
the same pages and nothing is left on disk. Layout: a header holding the
registry generation (bumped by the zygote on every name change, so processes
can cache name lookups), then one 16-byte slot per process, at index
``serial % CAPACITY``: the owner's serial, its state and its mailbox length.
"""

from __future__ import annotations

import array
import mmap
import os
import struct

NAME = "otpy-status"  # as observers look for it in /proc/<pid>/fd
CAPACITY = 1 << 16
_HEADER = struct.Struct("<Q")
_SLOT = struct.Struct("<QII")
_SIZE = _HEADER.size + CAPACITY * _SLOT.size

FREE, RUNNING, WAITING = 0, 1, 2
STATE_NAMES = {FREE: "free", RUNNING: "running", WAITING: "waiting"}


class StatusTable:
    __slots__ = ("fd", "mem")

    def __init__(self, fd: int, mem: mmap.mmap) -> None:
        self.fd = fd
        self.mem = mem

    @classmethod
    def create(cls) -> "StatusTable":
        fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _SIZE)
            return cls(fd, mmap.mmap(fd, _SIZE))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open_readonly(cls, fd: int) -> "StatusTable":
        """Map another node's table (an observer's view); the fd can be closed after."""
        return cls(-1, mmap.mmap(fd, _SIZE, prot=mmap.PROT_READ))

    def close(self) -> None:
        """Unmap the table and close its descriptor."""
        self.close_fd()
        self.mem.close()

    def close_fd(self) -> None:
        """Children keep the mapping but not the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def generation(self) -> int:
        return _HEADER.unpack_from(self.mem, 0)[0]

    def bump_generation(self) -> None:
        _HEADER.pack_into(self.mem, 0, self.generation() + 1)

    @staticmethod
    def _offset(serial: int) -> int:
        return _HEADER.size + (serial % CAPACITY) * _SLOT.size

    def slot_free(self, serial: int) -> bool:
        return _SLOT.unpack_from(self.mem, self._offset(serial))[1] == FREE

    def claim(self, serial: int) -> None:
        _SLOT.pack_into(self.mem, self._offset(serial), serial, RUNNING, 0)

    def release(self, serial: int) -> None:
        _SLOT.pack_into(self.mem, self._offset(serial), 0, FREE, 0)

    def set(self, serial: int, state: int, queue_len: int) -> None:
        _SLOT.pack_into(self.mem, self._offset(serial), serial, state, queue_len)

    def live(self) -> int:
        """How many slots are taken: the node's live processes, the program's
        own included (a spare has none)."""
        words = array.array("I", self.mem[_HEADER.size:])  # a slot: owner (2 words), state, length
        return CAPACITY - words[2::4].count(FREE)

    def get(self, serial: int) -> tuple[int, int] | None:
        owner, state, qlen = _SLOT.unpack_from(self.mem, self._offset(serial))
        if owner != serial or state == FREE:
            return None
        return state, qlen
