"""The fixed-window and token-bucket limiters' buckets in shared memory: a
hash table every process maps and updates itself under a lock, so a hit
costs no message to the owner.

Layout and rules:

- The *control page* is a memfd held by the limiter's supervisor (created in
  the owner's start function, like the breaker's page). It says where the
  current table is (the owner's OS pid and fd, its capacity, a generation
  number) and carries the lock: ``flock`` on each process's own open of the
  control page. The kernel drops a flock when its holder dies, so a process
  SIGKILLed inside a hit never leaves the limiter locked. A
  ``threading.Lock`` per process adds exclusion between its own threads (a
  flock is per open file, which threads share).
- The *table* is a memfd created by the owner: open addressing, linear
  probing, power-of-two capacity. A slot is 8 words: tag (empty / live /
  deleted), the key's 128-bit digest, the window, and the algorithm's state
  (``_limiter_algorithms``: the same arithmetic as the owner's buckets).
  Buckets are identified by the digest of the key's canonical encoding
  (``encode_key``): different keys collide with probability 2^-128.
- Only the owner replaces the table, under the lock: when it is half full
  (a handle asks it to grow) and at every ``cleanup_interval`` (expired
  buckets dropped, capacity fitted to what is left). It publishes the new
  table, bumps the generation, then truncates the old memfd, so its memory
  is freed at once even if idle processes still map it: they look at the
  generation under the lock before touching any table, and remap.

Every access to a table happens under the lock, so the limiter is exact: no
hit is lost and no window admits more than its limit. A process killed in
the middle of updating a slot (a few microseconds) can leave that one bucket
off by that one hit.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import threading
import time
from typing import Any

from ._limiter_algorithms import Buckets
from ._shared_memory import Page, create, free

# control page words (word 0: page id)
C_GEN, C_PID, C_FD, C_CAPACITY, C_RETIRED = 1, 2, 3, 4, 5
# hits counted (inspect() counts none), bumped under the lock; otpy.metrics reads them
C_ALLOWED, C_DENIED = 6, 7
CONTROL_BYTES = 4096

# table
T_USED = 0  # slots not empty (live + deleted)
T_NEXT = 1  # no bucket expires before this (ns): a sweep before it has nothing to do
T_GEN = 2  # the generation it was published as: proves a mapping is the right table
_NEVER = (1 << 63) - 1
HEADER = 8
SLOT = 8
EMPTY, LIVE, DELETED = 0, 1, 2
MIN_CAPACITY = 1024
_LOW62 = (1 << 62) - 1
_MIX = 0x9E3779B97F4A7C15

GROW = object()  # a hit that needs a bigger table first
_TRY_LOCK = fcntl.LOCK_EX | fcntl.LOCK_NB
_UNLOCK = fcntl.LOCK_UN


class Retired(Exception):
    """The limiter this mapping belongs to was stopped (internal)."""


class TableGone(Exception):
    """The table's owner died and no replacement has published one yet (internal)."""


class LockTimeout(Exception):
    """The lock was held past the deadline (the handle raises its own error)."""


def encode_key(key: Any) -> bytes:
    """A canonical byte string for a key: equal Python keys give equal bytes,
    different ones different bytes (type-tagged, length-prefixed)."""
    if type(key) is str:
        return b"s" + key.encode("utf-8", "surrogatepass")
    parts: list[bytes] = []

    def encode(k: Any) -> None:
        if isinstance(k, str):
            data = k.encode("utf-8", "surrogatepass")
            parts.append(b"s%d:" % len(data) + data)
        elif isinstance(k, bytes):
            parts.append(b"b%d:" % len(k) + bytes(k))
        elif isinstance(k, int):
            parts.append(b"i%d;" % int(k))
        else:
            parts.append(b"t%d:" % len(k))
            for item in k:
                encode(item)

    encode(key)
    return b"c" + b"".join(parts)


_DIGESTS: dict[Any, tuple[int, int]] = {}
_DIGESTS_KEPT = 4096


def digest(key: Any) -> tuple[int, int]:
    """The key's 128-bit digest as two words (the last few thousand kept:
    hashing costs more than the rest of a hit)."""
    found = _DIGESTS.get(key)
    if found is None:
        raw = hashlib.blake2b(encode_key(key), digest_size=16).digest()
        found = (int.from_bytes(raw[:8], "little", signed=True),
                 int.from_bytes(raw[8:], "little", signed=True))
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        _DIGESTS[key] = found
    return found


# ---- slot states as words -------------------------------------------------------------------

def _load(algorithm: str, words: Any, base: int) -> list:
    if algorithm == "fixed_window":
        return [words[base + 4], words[base + 5]]
    return [(words[base + 4] << 62) | words[base + 5], words[base + 6], words[base + 7]]


def _store(algorithm: str, words: Any, base: int, state: list) -> None:
    if algorithm == "fixed_window":
        words[base + 4] = state[0]
        words[base + 5] = state[1]
    else:
        units = state[0]
        words[base + 4] = units >> 62
        words[base + 5] = units & _LOW62
        words[base + 6] = state[1]
        words[base + 7] = state[2]


def _expiry(algorithm: str, state: list, window: int) -> int:
    """When a bucket will hold nothing (ns); an update never makes it earlier
    (unless a later hit gives a larger limit: then a sweep comes late)."""
    if algorithm == "fixed_window":
        return (state[0] + 1) * window
    units, last, limit = state
    return last + -(-(limit * window - units) // limit)


def _expired(algorithm: str, state: list, window: int, now: int) -> bool:
    if algorithm == "fixed_window":
        return Buckets._expired_fixed_window(state, window, now)
    return Buckets._expired_token_bucket(state, window, now)


def table_bytes(capacity: int) -> int:
    return (HEADER + capacity * SLOT) * 8


class Table:
    """One mapping of a table memfd."""

    def __init__(self, page: Page, capacity: int) -> None:
        self.page = page
        self.words = page.words
        self.capacity = capacity

    @classmethod
    def open(cls, os_pid: int, fd: int, capacity: int) -> "Table":
        """Map the table ``fd`` of process ``os_pid``; OSError if it is gone."""
        return cls(Page.open(os_pid, fd, table_bytes(capacity)), capacity)

    def close(self) -> None:
        self.page.close()

    def find(self, hi: int, lo: int, window: int) -> tuple[int, int]:
        """(base of the live slot, or -1; base where it would be inserted, or -1 if full)."""
        words = self.words
        mask = self.capacity - 1
        i = (lo ^ (window * _MIX)) & mask
        free = -1
        for _ in range(self.capacity):
            base = HEADER + i * SLOT
            tag = words[base]
            if tag == EMPTY:
                return -1, (base if free < 0 else free)
            if tag == LIVE:
                if words[base + 1] == hi and words[base + 2] == lo and words[base + 3] == window:
                    return base, base
            elif free < 0:
                free = base
            i = (i + 1) & mask
        return -1, free

    def live(self) -> list[tuple[int, int, int, int]]:
        """Every live slot: (hi, lo, window, base)."""
        return [(self.words[b + 1], self.words[b + 2], self.words[b + 3], b)
                for b in range(HEADER, HEADER + self.capacity * SLOT, SLOT)
                if self.words[b] == LIVE]


def decide(table: Table, algorithm: str, hi: int, lo: int, limit: int, window: int, cost: int,
           now: int, count: bool) -> Any:
    """One hit on a table (the lock held): an Outcome-like tuple
    (allowed, count, remaining, retry_after_ns, reset_at_ns), or GROW."""
    base, where = table.find(hi, lo, window)
    if algorithm == "fixed_window":
        return _fixed_window(table, base, where, hi, lo, limit, window, cost, now, count)
    return _token_bucket(table, base, where, hi, lo, limit, window, cost, now, count)


def _fixed_window(table: Table, base: int, where: int, hi: int, lo: int, limit: int,
                  window: int, cost: int, now: int, count: bool) -> Any:
    """Buckets._fixed_window, on the words directly (the common case, kept short)."""
    words = table.words
    index = now // window
    used = words[base + 5] if base >= 0 and words[base + 4] == index else 0
    reset_at = (index + 1) * window
    if used + cost > limit:
        return (False, used, max(0, limit - used), reset_at - now, reset_at)
    if count:
        used += cost
        if base >= 0:
            words[base + 4] = index
            words[base + 5] = used
        elif _insert(table, where, hi, lo, window, "fixed_window", [index, used]) is GROW:
            return GROW
    return (True, used, limit - used, 0, reset_at)


def _token_bucket(table: Table, base: int, where: int, hi: int, lo: int, limit: int,
                  window: int, cost: int, now: int, count: bool) -> Any:
    """Buckets._token_bucket, on the words directly."""
    words = table.words
    capacity = limit * window
    if base >= 0:
        units = min(capacity, ((words[base + 4] << 62) | words[base + 5])
                    + max(0, now - words[base + 6]) * limit)
    else:
        units = capacity
    need = cost * window
    allowed = units >= need
    if allowed and count:
        units -= need
        if base >= 0:
            words[base + 4] = units >> 62
            words[base + 5] = units & _LOW62
            words[base + 6] = now
            words[base + 7] = limit
        elif _insert(table, where, hi, lo, window, "token_bucket", [units, now, limit]) is GROW:
            return GROW
    remaining = units // window
    reset_at = now + -(-(capacity - units) // limit)
    if allowed:
        return (True, limit - remaining, remaining, 0, reset_at)
    retry = window if cost > limit else -(-(need - units) // limit)
    return (False, limit - remaining, remaining, retry, reset_at)


def _insert(table: Table, where: int, hi: int, lo: int, window: int, algorithm: str,
            state: list) -> Any:
    """A new bucket at ``where`` (from find); GROW if the table is half full."""
    words = table.words
    fresh = where >= 0 and words[where] == EMPTY
    if where < 0 or (fresh and (words[T_USED] + 1) * 2 > table.capacity):
        return GROW
    _store(algorithm, words, where, state)
    words[where + 1] = hi
    words[where + 2] = lo
    words[where + 3] = window
    words[where] = LIVE  # last: a slot is findable only once complete
    if fresh:
        words[T_USED] += 1
    expiry = _expiry(algorithm, state, window)
    if expiry < words[T_NEXT]:
        words[T_NEXT] = expiry
    return None


class Control:
    """A process's open control page: the lock, and the current table."""

    def __init__(self, os_pid: int, fd: int, timeout: float = 5.0) -> None:
        self.timeout = timeout  # math.inf: wait for the lock as long as it takes
        self.page = Page.open(os_pid, fd, CONTROL_BYTES, keep=True)  # keep: to flock it
        self.fd: int = self.page.fd  # type: ignore[assignment]
        self.words = self.page.words
        self.thread_lock = threading.Lock()
        self.table: Table | None = None
        self.gen = -1

    def __enter__(self) -> "Control":
        if not self.thread_lock.acquire(False) and not self.thread_lock.acquire(
                timeout=-1 if self.timeout == math.inf else self.timeout):  # -1: no limit
            raise LockTimeout(f"a thread of this process held the limiter's lock "
                              f"for over {self.timeout}s")
        try:
            fcntl.flock(self.fd, _TRY_LOCK)
        except BlockingIOError:
            self._wait_for_lock()
        except BaseException:
            self.thread_lock.release()
            raise
        return self

    def _wait_for_lock(self) -> None:
        """Another process holds the lock. A dead holder cannot (the kernel
        drops its flock), so this waits for a live one that is slow or
        stopped: yield the CPU to it, then back off, until the deadline."""
        deadline = time.monotonic() + self.timeout
        tries = 0
        try:
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    tries += 1
                    if tries < 100:
                        os.sched_yield()
                    elif time.monotonic() > deadline:
                        raise LockTimeout(f"another process held the limiter's lock "
                                          f"for over {self.timeout}s") from None
                    else:
                        time.sleep(0.0001)
        except BaseException:
            self.thread_lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self.fd, _UNLOCK)
        finally:
            self.thread_lock.release()

    def current(self) -> Table:
        """The table to use now (call with the lock held); Retired if stopped."""
        words = self.words
        if words[C_GEN] == self.gen and not words[C_RETIRED]:
            return self.table  # type: ignore[return-value]  # the usual case: unchanged
        if words[C_RETIRED]:
            raise Retired()
        if words[C_GEN] != self.gen:
            old, self.table = self.table, None
            if old is not None:
                old.close()
            gen = words[C_GEN]
            try:
                table = Table.open(words[C_PID], words[C_FD], words[C_CAPACITY])
            except (OSError, ValueError):
                raise TableGone() from None  # its owner is dead (its fds with it)
            if table.words[T_GEN] != gen:  # the OS pid was reused: not our table
                table.close()
                raise TableGone()
            self.table, self.gen = table, gen
        assert self.table is not None
        return self.table

    def close(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table = None
        self.page.close()


class TableOwner:
    """The owner's side: creates, grows and sweeps tables."""

    def __init__(self, control: Control, algorithm: str) -> None:
        self.control = control
        self.algorithm = algorithm
        self.fd = -1
        self.table: Table | None = None

    def rebuild(self, now: int, grow: bool = False) -> int:
        """Replace the table (with the lock held): expired buckets dropped,
        capacity fitted (doubled if ``grow``). How many buckets were dropped."""
        old = self.table
        entries, dropped = self._kept(now)
        capacity = MIN_CAPACITY
        while capacity < 4 * len(entries):
            capacity *= 2
        if grow and old is not None:
            capacity = max(capacity, 2 * old.capacity)
        fd, page = create("otpy-limiter-table", table_bytes(capacity))
        table = Table(page, capacity)
        self._fill(table, entries)
        words = self.control.words
        table.words[T_GEN] = words[C_GEN] + 1
        words[C_PID] = os.getpid()
        words[C_FD] = fd
        words[C_CAPACITY] = capacity
        words[C_GEN] += 1  # last: the new table is complete before anyone looks
        if old is not None:
            free(self.fd)  # the memory goes now, whoever still maps it
            old.close()
        self.table, self.fd = table, fd
        self.control.gen = words[C_GEN]
        self.control.table = None  # the owner's own view is self.table
        return dropped

    def _kept(self, now: int) -> tuple[list[tuple[int, int, int, list]], int]:
        """The current table's live buckets that have not expired, and how
        many have."""
        entries: list[tuple[int, int, int, list]] = []
        dropped = 0
        if self.table is not None:
            for hi, lo, window, base in self.table.live():
                state = _load(self.algorithm, self.table.words, base)
                if _expired(self.algorithm, state, window, now):
                    dropped += 1
                else:
                    entries.append((hi, lo, window, state))
        return entries, dropped

    def _fill(self, table: Table, entries: list[tuple[int, int, int, list]]) -> None:
        """Put ``entries`` into a new, empty ``table``."""
        for hi, lo, window, state in entries:
            _, where = table.find(hi, lo, window)
            _store(self.algorithm, table.words, where, state)
            table.words[where + 1] = hi
            table.words[where + 2] = lo
            table.words[where + 3] = window
            table.words[where] = LIVE
        table.words[T_USED] = len(entries)
        table.words[T_NEXT] = min((_expiry(self.algorithm, state, window)
                                   for _, _, window, state in entries), default=_NEVER)

    def sweep(self, now: int) -> int | None:
        """The periodic cleanup (lock held): a rebuild without the expired
        buckets, or None if none can have expired yet (the table untouched)."""
        assert self.table is not None
        if now < self.table.words[T_NEXT]:
            return None
        return self.rebuild(now)

    def counts(self) -> tuple[int, int]:
        """(buckets, distinct keys) in the table."""
        assert self.table is not None
        live = self.table.live()
        return len(live), len({(hi, lo) for hi, lo, _, _ in live})

    def size(self) -> int:
        """The table's bytes."""
        assert self.table is not None
        return table_bytes(self.table.capacity)

    def close(self) -> None:
        """Drop the table (with the lock held, the limiter marked retired):
        its memory is freed now, whoever still maps it."""
        if self.table is not None:
            free(self.fd)
            self.table.close()
            self.table = None


def reset_key(table: Table, hi: int, lo: int) -> int:
    """Delete every bucket of a key (every window), with the lock held."""
    words = table.words
    deleted = 0
    for base in range(HEADER, HEADER + table.capacity * SLOT, SLOT):
        if words[base] == LIVE and words[base + 1] == hi and words[base + 2] == lo:
            words[base] = DELETED
            deleted += 1
    return deleted


__all__ = ["GROW", "Control", "LockTimeout", "Retired", "TableGone", "Table", "TableOwner",
           "decide", "digest", "encode_key", "reset_key"]
