"""Claims: a caller takes a free worker without asking the pool's server.

Why: a session-less command went caller -> server -> worker -> caller (the
server picks a free worker, hands it the command, and the worker checks
in), where a bound session's command is one round trip. With claims, the
steady state is one round trip too: the caller *claims* a free worker
itself, sends it the command, and releases the claim once answered.

How: the server makes one memfd, the *claims page*, with a word per
*slot* (a regular worker's place: the worker's serial and OS pid, or 0
while the server holds the slot or wants it back). Each slot has a
one-byte POSIX record lock (``fcntl.lockf``) on that file, past its end. The server holds a
slot's lock while its worker is not free for claims (starting, checked
out, handed a command, leaving, gone, or callers are queued: they come
first, and the book has no free worker while they wait); it lets go
(``open``) when the book has the worker idle and nobody is queued. A caller
claims by taking a slot's lock without waiting (``take``); only one process
can hold it, so a claim is exclusive, and a claimed worker is free of
every other command the server knows of.

Why POSIX record locks: the kernel drops a process's locks when it dies,
so a caller SIGKILLed while it holds a claim frees it (a token or a word
in shared memory would be lost with it). They belong to the OS process,
not the thread, so threads of one process share a per-process set of the
slots they hold (``Claims.mine``). And a process's locks on a file go
when it closes *any* descriptor of that file: each process keeps one
mapping of the page, open as long as it uses that server, and closes it
when the server is replaced or the pool stops (that page's locks mean
nothing then).

A caller that gives up on its command (cancelled, interrupted) keeps its
claim until the worker has ended that command (``_caller.release_after_running``).
A caller SIGKILLed while its command runs loses its claim at once: the
command runs on, and a command that claims that worker meanwhile waits
behind it (its timeout counts from its send).

When the server needs a worker back while a caller holds it (callers are
queued, or the worker's slot must change hands), a thread of the server
waits on the lock (``wait_for``) and tells the server when it has it:
when the caller releases the claim, or dies.

The server's side is ``ClaimsPage``; a caller's, ``Claims`` (one per pool
per OS process: ``claims_of`` and ``make``), used by ``_caller.run_claimed``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
from typing import Any, Callable, NamedTuple

import otpy
from otpy import lowlevel

from ._shared_memory import Page, create

LOCKS_AT = 1 << 30  # slot i's lock is the byte at LOCKS_AT + i (past the page's end)
# struct flock as Linux on 64-bit machines lays it out (x86-64, aarch64): type,
# whence, start, len, pid, padded to 32 bytes; otpy runs on Linux only
_F_GETLK_ARGS = "hhqqi4x"
_monotonic = time.monotonic
_CONFLICTS = (errno.EAGAIN, errno.EACCES)  # another process holds the lock
_TRY = fcntl.LOCK_EX | fcntl.LOCK_NB


class ClaimsAddress(NamedTuple):
    """Where a pool's claims page is: its server, that server's OS pid and
    the page's descriptor there, and the number of slots."""

    server: otpy.Pid
    os_pid: int
    fd: int
    slots: int
    lifo: bool  # the pool's strategy: the worker this process released last first


def _lock(fd: int, slot: int, wait: bool) -> bool:
    """Take ``slot``'s lock (``wait``: until it is free): False if another
    process holds it (never with ``wait``)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX if wait else _TRY, 1, LOCKS_AT + slot)
    except OSError as exc:
        if exc.errno in _CONFLICTS and not wait:
            return False
        raise
    return True


def _unlock(fd: int, slot: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, LOCKS_AT + slot)


# ---- the server's side ---------------------------------------------------------------------

class ClaimsPage:
    """The server's claims page: every slot's lock held until ``open``."""

    def __init__(self, server: otpy.Pid, slots: int, lifo: bool) -> None:
        self.fd, self.page = create("otpy_pool.claims", 8 * max(slots, 1), "Q")
        self.address = ClaimsAddress(server, os.getpid(), self.fd, slots, lifo)
        try:
            for slot in range(slots):
                _lock(self.fd, slot, wait=False)
        except BaseException:
            self.close()
            raise

    def open(self, slot: int, worker: otpy.Pid) -> None:
        """``worker`` is free for one claim at a time, in ``slot`` (which the
        server holds)."""
        self.page.words[slot] = worker.serial << 32 | worker.os_pid
        _unlock(self.fd, slot)

    def hold(self, slot: int) -> bool:
        """Take ``slot`` back: False if a caller holds it now (``wait_for``)."""
        if not _lock(self.fd, slot, wait=False):
            return False
        self.page.words[slot] = 0
        return True

    def wait_for(self, slot: int, then: Callable[[int], None]) -> None:
        """In a thread of its own: wait for ``slot``'s lock (its caller
        releases it, or dies), then ``then(slot)``. Its word is zeroed first,
        so that no caller claims it again meanwhile (a claim of a zero word
        is let go at once)."""
        self.page.words[slot] = 0

        def wait() -> None:
            while True:
                try:
                    _lock(self.fd, slot, wait=True)
                    break
                except OSError as exc:  # EDEADLK, ENOLCK: the kernel's, rare; tried again
                    lowlevel.logger().warning("pool claims: the wait for a slot failed, "
                                              "trying again", slot=slot, error=repr(exc))
                    time.sleep(0.01)
            then(slot)

        threading.Thread(target=wait, name=f"otpy-pool-claim-{slot}", daemon=True).start()

    def claimed(self, slot: int) -> bool:
        """Whether a caller holds the (open) slot now: asked, not taken."""
        probe = struct.pack(_F_GETLK_ARGS, fcntl.F_WRLCK, os.SEEK_SET, LOCKS_AT + slot, 1, 0)
        kind = struct.unpack(_F_GETLK_ARGS, fcntl.fcntl(self.fd, fcntl.F_GETLK, probe))[0]
        return kind != fcntl.F_UNLCK

    def close(self) -> None:
        """Unmapped and closed (its locks go with the descriptor)."""
        self.page.close()
        os.close(self.fd)


# ---- a caller's side -------------------------------------------------------------------------

class Claim(NamedTuple):
    slot: int
    worker: otpy.Pid


class Claims:
    """This process's way to claim a pool's free workers (one server's)."""

    def __init__(self, address: ClaimsAddress) -> None:
        self.address = address
        self.page = Page.open(address.os_pid, address.fd, 8 * max(address.slots, 1), "Q",
                              keep=True)
        self.fd: int = self.page.fd  # type: ignore[assignment]
        self.mine: set[int] = set()  # the slots this process's threads hold
        self.lock = threading.Lock()
        # where the next claim starts looking: LIFO, the slot released last
        # (a warm worker); FIFO, the one after the slot claimed last (round robin)
        self.next = 0
        self.closed = False
        # each slot's word and its worker's Pid, made when the word changes
        self.workers: list[tuple[int, Any]] = [(0, None)] * address.slots

    def take(self) -> Claim | None:
        """A free worker, claimed, or None: none is free now. Never waits."""
        words, fd, slots = self.page.words, self.fd, self.address.slots
        with self.lock:
            if self.closed:
                return None
            for i in range(slots):
                slot = (self.next + i) % slots
                if slot in self.mine or not words[slot]:
                    continue
                try:  # _lock's, written out: this is every session-less command's path
                    fcntl.lockf(fd, _TRY, 1, LOCKS_AT + slot)
                except OSError as exc:
                    if exc.errno in _CONFLICTS:
                        continue
                    raise
                word = words[slot]
                if not word:  # the server wants it back (see ClaimsPage.wait_for)
                    _unlock(fd, slot)
                    continue
                self.mine.add(slot)
                if not self.address.lifo:
                    self.next = slot + 1
                known, worker = self.workers[slot]
                if known != word:
                    worker = otpy.Pid(self.address.server.node, word >> 32, word & 0xFFFFFFFF)
                    self.workers[slot] = (word, worker)
                return Claim(slot, worker)
        return None

    def release(self, claim: Claim) -> None:
        with self.lock:
            if claim.slot in self.mine:
                if not self.closed:
                    _unlock(self.fd, claim.slot)
                self.mine.discard(claim.slot)
                if self.address.lifo:
                    self.next = claim.slot

    def close(self) -> None:
        """Every claim of this process on the page is released with it."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.page.close()


#: by pool key: (the server they were made for, this process's Claims on
#: it, or None if that pool has none, and when that server was last seen
#: to be the pool's: time.monotonic())
_claims: dict[Any, tuple[otpy.Pid, Claims | None, float]] = {}
_claims_lock = threading.Lock()
UNKNOWN: Any = object()  # claims_of's answer when the server must be asked (make)
#: how long a server seen to be the pool's is taken to still be (s): a
#: name lookup per command would cost a tenth of the command. A caller
#: that meets a replaced server's workers within it sees them answer, or
#: die (NoProc), and asks the server, which is then the new one.
RECHECK = 0.01


def recent(key: Any) -> Any:
    """This process's Claims on pool ``key`` if its server was seen within
    RECHECK (None: the pool has none); else UNKNOWN (look the server up)."""
    found = _claims.get(key)
    if found is not None and _monotonic() - found[2] < RECHECK:
        return found[1]
    return UNKNOWN


def claims_of(key: Any, server: otpy.Pid) -> Any:
    """This process's Claims on pool ``key`` whose server is ``server``
    (seen now); None if the pool has none; UNKNOWN if not made yet for
    that server."""
    with _claims_lock:
        found = _claims.get(key)
        if found is not None and found[0] == server:
            _claims[key] = (server, found[1], _monotonic())
            return found[1]
    return UNKNOWN


def make(key: Any, server: otpy.Pid, address: ClaimsAddress | None) -> Claims | None:
    """This process's Claims on ``server``'s page at ``address`` (its answer
    to CLAIMS; None: it has none), or None if the page cannot be opened here
    (remembered: the commands go through the server). Making one closes this
    process's claims on ``key``'s previous server, and on servers gone."""
    gone = [k for k, (s, _, _) in list(_claims.items()) if k != key and not otpy.is_alive(s)]
    with _claims_lock:
        found = _claims.get(key)
        if found is not None and found[0] == server:  # made meanwhile (another thread or
            return found[1]  # task): closing it would drop the claims made on it
        for old in [key, *gone]:
            claims = _claims.pop(old, (None, None, 0.0))[1]
            if claims is not None:
                claims.close()
        made = None
        if address is not None and address.server == server:
            try:
                made = Claims(address)
            except OSError as exc:  # no descriptor left, /proc closed to us, a dead server
                lowlevel.logger().warning("pool claims: the page cannot be opened here; "
                                          "commands go through the server", error=repr(exc))
        _claims[key] = (server, made, _monotonic())
        return made


def forget(key: Any) -> None:
    """This process's claims on pool ``key`` closed (the pool stopped)."""
    with _claims_lock:
        found = _claims.pop(key, (None, None, 0.0))[1]
    if found is not None:
        found.close()
