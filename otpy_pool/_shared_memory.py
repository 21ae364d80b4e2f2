"""Shared memory for otpy_pool: memfds created, opened and mapped in one
place. Every shared-memory user of the package goes through here: the
breaker's page, the limiter's control page and tables, a pool worker's
counts page.

Why a memfd and not /dev/shm: nothing has a name to leak. The memory lives
as long as its holder keeps the fd open or anyone keeps it mapped, and goes
away with them, so a SIGKILLed program leaves nothing behind. Why
``/proc/<os_pid>/fd/<fd>``: otpy processes are forked by the zygote, not by
each other, so an fd cannot be inherited; the kernel lets the same OS user
(only) open another process's fd through /proc, as the observer does with
the zygote's page.

- :func:`create`: a new zeroed memfd and this process's mapping of it (the
  fd is the creator's to keep open, for others to reach).
- :meth:`Page.open`: map another process's memfd, by its OS pid and fd.
- :func:`hold`: a page held by a long-lived process (a supervisor), so that
  it outlives the child that uses it.

A page is read as words: a memoryview cast to ``"q"`` (signed 64-bit) or
``"Q"``. An aligned 8-byte store is atomic on the machines otpy runs on, so
a reader sees a word before or after a store, never torn. Each word has a
single writer (its owner, or the process a counter slot belongs to); no lock.
Every step that can fail closes what the steps before it opened.
"""

from __future__ import annotations

import mmap
import os
import secrets
from typing import Literal

#: how a page's words are read: signed or unsigned 64-bit
Kind = Literal["q", "Q"]


class Page:
    """One mapping of a memfd: ``words`` is its view as 64-bit words.

    ``fd`` is the descriptor this mapping keeps open (``keep=True`` in
    :meth:`open`: to ``flock`` it, say), closed with the mapping; else None.
    """

    __slots__ = ("_map", "words", "size", "fd")

    def __init__(self, fd: int, size: int, kind: Kind = "q") -> None:
        """Map ``size`` bytes of ``fd`` (which stays the caller's)."""
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self._map).cast(kind)
        self.size = size
        self.fd: int | None = None

    @classmethod
    def open(cls, os_pid: int, fd: int, size: int, kind: Kind = "q", *,
             keep: bool = False) -> Page:
        """Map the memfd ``fd`` of process ``os_pid`` (same OS user only).
        OSError if it is gone or smaller than ``size`` (truncated: retired)."""
        path = f"/proc/{os_pid}/fd/{fd}"
        local = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(local).st_size < size:
                raise OSError(f"{path} is not the expected page (smaller than {size} bytes)")
            page = cls(local, size, kind)
        except BaseException:
            os.close(local)
            raise
        if keep:
            page.fd = local
        else:
            os.close(local)
        return page

    def read(self, offset: int, length: int) -> bytes:
        return self._map[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self._map[offset:offset + len(data)] = data

    def close(self) -> None:
        """Unmap (and close the kept fd, if any)."""
        self.words.release()
        self._map.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def create(label: str, size: int, kind: Kind = "q") -> tuple[int, Page]:
    """A new zeroed memfd of ``size`` bytes (close-on-exec), and this
    process's mapping of it. ``label`` names it in ``/proc/<pid>/fd``."""
    fd = os.memfd_create(label, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return fd, Page(fd, size, kind)
    except BaseException:
        os.close(fd)
        raise


def free(fd: int) -> None:
    """Give a created memfd's memory back now, whoever still maps it
    (truncated to nothing; they must look before they touch it), and close it."""
    os.ftruncate(fd, 0)
    os.close(fd)


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
        fd, page = create(label, size)
        page.words[0] = secrets.randbits(62) + 1
        page.close()
        held = _HELD[key] = (fd, size)
    return os.getpid(), held[0], held[1]
