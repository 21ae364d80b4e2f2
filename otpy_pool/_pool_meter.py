"""A pool's metrics table: one page of shared memory its supervisor holds,
written by the pool's server and its workers, read by a scrape.

Why one page per pool, held by the supervisor: a scrape (otpy.metrics, in
this program or in ``python -m otpy.observer --prometheus`` outside it)
opens one memfd per pool and never calls a process; and the page outlives
the server and every worker, so no count is lost when one dies and counters
go on across a server's restart.

Layout (signed 64-bit words; one writer per word at a time):

- a header: the layout (commands K, slots S, buckets B), then the server's
  figures (``SERVER_FIELDS``), rewritten by the server after each message it
  handles (a few stores: no message, no call);
- S worker slots. The server gives each worker it starts a free slot; the
  worker writes its commands there: which one runs (``RUNNING``, the
  command's index + 1), and per command ok, error, crashed, the sum of the
  durations (ns) and the bucket counts of the duration histogram. A slot
  freed at its worker's death keeps its counts and the next worker adds to
  them, so a scrape sums every slot and a count never goes back. The server
  writes a slot only after its worker's death: the command it was running
  (if any) is counted ``crashed`` there.

The commands are the Worker class's, then the executor's function, then
``UNKNOWN`` (a name the class does not have): a fixed table, so the
labels stay bounded.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Sequence

from otpy import lowlevel

from ._protocol import FUNCTION
from ._shared_memory import Page, hold

LABEL = "otpy_pool.metrics:"  # + the pool's name: the memfd's name in /proc/<holder>/fd
UNKNOWN = "(unknown)"  # the command label of a name the Worker class does not have
#: the duration histogram's upper bounds, seconds (+Inf is the last bucket)
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS_NS = [round(b * 1e9) for b in BOUNDS]
BUCKETS = len(BOUNDS) + 1
MAGIC = 0x6F74707900000001  # "otpy", layout 1
W_MAGIC, W_COMMANDS, W_SLOTS, W_BUCKETS = 1, 2, 3, 4
#: the server's figures, from word FIELDS_AT: gauges, then counters
GAUGES = ("size", "overflow", "idle", "busy", "leaving", "queued", "sessions", "shortfall",
          "degraded")
COUNTERS = ("worker_starts", "worker_start_failures", "worker_restarts", "timeouts",
            "sessions_recovered", "sessions_lost")
SERVER_FIELDS = GAUGES + COUNTERS
FIELDS_AT = 8
SLOTS_AT = 32
OWNER, RUNNING = 0, 1  # a slot's words: its worker's OS pid (0: free), the command running
OK, ERROR, CRASHED, SUM_NS = 0, 1, 2, 3  # a command's words, then its buckets
COMMAND_WORDS = 4 + BUCKETS
assert FIELDS_AT + len(SERVER_FIELDS) <= SLOTS_AT


def memfd_name(pool: str) -> str:
    """The page's memfd name (LABEL + the pool's name, cut to the kernel's
    249 bytes): what ``/proc/<holder>/fd`` shows and a scrape looks for."""
    return (LABEL + pool).encode()[:249].decode(errors="ignore")


def command_names(worker_cls: type) -> tuple[str, ...]:
    """The table's commands for a Worker class, in their order."""
    commands = worker_cls.commands()  # type: ignore[attr-defined]
    names = [n for n in commands if n not in (FUNCTION, UNKNOWN)]
    return (*names, FUNCTION, UNKNOWN)


def slot_count(size: int, max_overflow: int) -> int:
    """Slots for a pool: its workers, and as many again leaving (retiring or
    killed) while their replacements run."""
    return 2 * (size + max_overflow) + 4


def slot_words(commands: int) -> int:
    return 2 + commands * COMMAND_WORDS


def page_bytes(commands: int, slots: int) -> int:
    return 8 * (SLOTS_AT + slots * slot_words(commands))


def hold_page(name: str, worker_cls: type, size: int, max_overflow: int) -> tuple[int, int, int]:
    """In the pool's supervisor (the server's start function): the pool's
    page, ``(os_pid, fd, size)``, the same one for a restarted server."""
    commands = len(command_names(worker_cls))
    return hold(("otpy_pool.metrics", name), page_bytes(commands, slot_count(size, max_overflow)),
                memfd_name(name))


class WorkerMeter:
    """A worker's slot: ``start(name)`` before a command, ``done(...)`` after."""

    __slots__ = ("page", "words", "base", "index")

    def __init__(self, ref: tuple[int, int, int, int], worker_cls: type) -> None:
        os_pid, fd, size, slot = ref
        self.page = Page.open(os_pid, fd, size)
        self.words = self.page.words
        names = command_names(worker_cls)
        self.base = SLOTS_AT + slot * slot_words(len(names))
        first = self.base + 2
        self.index = {n: first + i * COMMAND_WORDS for i, n in enumerate(names)}

    def start(self, name: str) -> tuple[int, int]:
        """The command is running (until ``done``): its words and start time."""
        at = self.index.get(name)
        if at is None:
            at = self.index[UNKNOWN]
        self.words[self.base + RUNNING] = at
        return at, time.perf_counter_ns()

    def done(self, started: tuple[int, int], ended_ns: int, ok: bool) -> None:
        at, began = started
        words = self.words
        took = ended_ns - began
        words[at + (OK if ok else ERROR)] += 1
        words[at + SUM_NS] += took
        words[at + 4 + bisect.bisect_left(_BOUNDS_NS, took)] += 1
        words[self.base + RUNNING] = 0

    def failed(self, name: str) -> None:
        """A command answered with an error without running (its session was lost)."""
        self.words[self.index.get(name, self.index[UNKNOWN]) + ERROR] += 1

    def close(self) -> None:
        self.page.close()


class PoolMeter:
    """The server's side: the header's figures, and the slots it hands out."""

    def __init__(self, ref: tuple[int, int, int], worker_cls: type, size: int,
                 max_overflow: int) -> None:
        self.ref = ref
        self.page = Page.open(*ref)
        self.words = self.page.words
        self.commands = len(command_names(worker_cls))
        self.slots = slot_count(size, max_overflow)
        self.width = slot_words(self.commands)
        words = self.words
        words[W_COMMANDS], words[W_SLOTS], words[W_BUCKETS] = self.commands, self.slots, BUCKETS
        words[W_MAGIC] = MAGIC
        # counters go on from a replaced server's
        self.base = {f: words[FIELDS_AT + i] for i, f in enumerate(SERVER_FIELDS)
                     if f in COUNTERS}
        self.mine = {f: 0 for f in ("worker_starts", "worker_start_failures")}
        self.owners: dict[int, int] = {}  # worker OS pid -> its slot

    def adopt(self, os_pids: Sequence[int]) -> None:
        """A new server: the slots of the workers it adopted stay theirs,
        the others are free (their workers are gone)."""
        keep = set(os_pids)
        for slot in range(self.slots):
            owner = self.words[self._at(slot) + OWNER]
            if owner in keep:
                self.owners[owner] = slot
            elif owner:
                self._free(slot)

    def claim(self) -> tuple[int, int, int, int] | None:
        """A free slot for a worker about to start (None: none left, the
        worker is not counted)."""
        taken = set(self.owners.values())
        for slot in range(self.slots):
            if slot not in taken and not self.words[self._at(slot) + OWNER]:
                self.words[self._at(slot) + OWNER] = -1  # claimed, the start under way
                return (*self.ref, slot)
        lowlevel.logger().warning("pool metrics: no slot left, a worker's commands go uncounted",
                                  slots=self.slots)
        return None

    def started(self, ref: tuple[int, int, int, int] | None, os_pid: int | None) -> None:
        """The start of the worker given ``ref`` succeeded (``os_pid``) or failed (None)."""
        self.mine["worker_starts" if os_pid is not None else "worker_start_failures"] += 1
        if ref is None:
            return
        if os_pid is None:
            self._free(ref[3])
        else:
            self.words[self._at(ref[3]) + OWNER] = os_pid
            self.owners[os_pid] = ref[3]

    def gone(self, os_pid: int) -> None:
        """A worker died: the command it was running is counted crashed, and
        its slot is free (its counts stay)."""
        slot = self.owners.pop(os_pid, None)
        if slot is not None:
            self._free(slot)

    def _free(self, slot: int) -> None:
        base = self._at(slot)
        running = self.words[base + RUNNING]
        if running:
            self.words[running + CRASHED] += 1
            self.words[base + RUNNING] = 0
        self.words[base + OWNER] = 0

    def _at(self, slot: int) -> int:
        return SLOTS_AT + slot * self.width

    def publish(self, figures: Sequence[int], counts: dict[str, int]) -> None:
        """The server's figures now: ``figures`` the GAUGES in order,
        ``counts`` the book's counters (since this server started)."""
        words = self.words
        for i, value in enumerate(figures):
            words[FIELDS_AT + i] = value
        at = FIELDS_AT + len(GAUGES)
        base, mine = self.base, self.mine
        for i, field in enumerate(COUNTERS):
            words[at + i] = base[field] + (mine[field] if field in mine else counts[field])

    def close(self) -> None:
        self.page.close()


def read(words: Any, commands: Sequence[str]) -> dict[str, Any]:
    """A scrape's reading of a pool's page (``words``: its words, read-only):
    the server's figures by name, ``running`` (commands running now) and, per
    command, ``(ok, error, crashed, sum_ns, buckets)`` summed over the slots."""
    k, slots, buckets = words[W_COMMANDS], words[W_SLOTS], words[W_BUCKETS]
    if words[W_MAGIC] != MAGIC or k != len(commands) or buckets != BUCKETS:
        raise ValueError("not a pool metrics page of this layout")
    width = slot_words(k)
    end = SLOTS_AT + slots * width

    def total(offset: int) -> int:
        return sum(words[SLOTS_AT + offset:end:width])

    figures = {f: words[FIELDS_AT + i] for i, f in enumerate(SERVER_FIELDS)}
    figures["running"] = sum(1 for w in words[SLOTS_AT + RUNNING:end:width] if w)
    per_command = {}
    for c, name in enumerate(commands):
        at = 2 + c * COMMAND_WORDS
        per_command[name] = (total(at + OK), total(at + ERROR), total(at + CRASHED),
                             total(at + SUM_NS), [total(at + 4 + b) for b in range(BUCKETS)])
    return {"figures": figures, "commands": per_command}
