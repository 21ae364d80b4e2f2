"""A page of memory that every process of a node can map: a memfd held by a
long-lived process and opened by the others through ``/proc/<os_pid>/fd/<fd>``.

Why a memfd and not /dev/shm: nothing has a name to leak. The memory lives
as long as its holder keeps the fd open or anyone keeps it mapped, and goes
away with them, so a SIGKILLed program leaves nothing behind. Why
``/proc/<pid>/fd``: otpy processes are forked by the zygote, not by each
other, so an fd cannot be inherited; the kernel lets the same OS user (only)
open another process's fd through /proc, as the observer does with the
zygote's page.

The holder is the supervisor of a breaker's subtree: it runs the owner's
start function (see :func:`hold`), so the page outlives an owner that is
killed and restarted, and handles' mappings stay valid across the restart.

Words are signed 64-bit integers (a memoryview cast to ``"q"``). An aligned
8-byte store is atomic on the machines otpy runs on, so a reader sees a word
either before or after a store, never torn. Each word has a single writer
(the owner, or the process a counter slot belongs to); nothing needs a lock.
"""

from __future__ import annotations

import mmap
import os
import secrets

#: memfds held by this process, by key: the holder's own table
_HELD: dict[object, tuple[int, int]] = {}


def hold(key: object, size: int, label: str) -> tuple[int, int, int]:
    """The ``(os_pid, fd, size)`` of this process's page for ``key``, created
    zeroed on first use (word 0 gets a random non-zero page id).

    Runs in the holder process (a supervisor, inside a child's start
    function): a restarted child gets the same page again.
    """
    held = _HELD.get(key)
    if held is None:
        fd = os.memfd_create(label, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            page = Page(fd, size)
        except BaseException:
            os.close(fd)
            raise
        page.words[0] = secrets.randbits(62) + 1
        page.close()
        held = _HELD[key] = (fd, size)
    return os.getpid(), held[0], held[1]


class Page:
    """One mapping of a page: ``words`` is the int64 view of it."""

    __slots__ = ("_map", "words", "size")

    def __init__(self, fd: int, size: int) -> None:
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self._map).cast("q")
        self.size = size

    @classmethod
    def open(cls, os_pid: int, fd: int, size: int) -> "Page":
        """Map the page ``fd`` of process ``os_pid`` (same OS user only)."""
        path = f"/proc/{os_pid}/fd/{fd}"
        local = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(local).st_size < size:
                raise OSError(f"{path} is not the expected page (smaller than {size} bytes)")
            return cls(local, size)
        finally:
            os.close(local)

    def read(self, offset: int, length: int) -> bytes:
        return self._map[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self._map[offset:offset + len(data)] = data

    def close(self) -> None:
        self.words.release()
        self._map.close()
