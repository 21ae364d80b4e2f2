"""A worker's command counts, in shared memory the pool's server reads.

Why: the counts in ``status()`` must be exact, yet a command's path is one
round trip (caller -> worker -> caller) with no message to the pool's server.
So each worker keeps its counts in a small memfd of its own (commands run,
commands that ended in an error) and the server maps that memfd once, when
it starts tracking the worker, through ``/proc/<worker>/fd/<n>`` (the kernel
allows this to the same OS user only; otpy's observer reads the node the
same way). The server reads the counts when ``status()`` is asked, and a
last time when the worker dies: its mapping outlives the worker, so even a
SIGKILL loses no count. An increment is one aligned 8-byte store, which the
reader sees whole.

The same page says which command the worker is running: the caller's ref
(its process's serial and the ref's number) from before the command starts
until after its reply is sent, and whether it has been counted yet (it is,
before its reply, so that ``status()`` after a command returned is exact).
Read after the worker's death, it tells the one command that was running
(WorkerCrashed) from those queued behind it or on their way, which never
started and can run on another worker. An async worker running up to
``max_concurrency`` commands at once has that many such slots, one after
the other (``SLOT`` words each; the first is a sync worker's only one).
"""

from __future__ import annotations

from ._shared_memory import Page, create

NAME = "otpy_pool.counts"
COMMANDS, ERRORS = 0, 1  # slots, each an unsigned 64-bit count
RUN_ORIGIN, RUN_N = 2, 3  # the running command's ref: its origin serial and number (0: none)
RUN_COUNTED = 4  # 1 once the running command is in COMMANDS (its reply is being sent)
SLOT = 3  # words per running-command slot: origin, counted, number (RUN_* for slot 0)
_SIZE = 40


def _size(slots: int) -> int:
    return _SIZE + (slots - 1) * SLOT * 8


class WorkerCounts:
    """The worker's side: creates the memfd; ``view[COMMANDS] += 1`` counts."""

    def __init__(self, slots: int = 1) -> None:
        self.fd, self._page = create(NAME, _size(slots), "Q")
        self.view = self._page.words


class CountsReader:
    """The server's side: a worker's counts, readable after it died."""

    def __init__(self, os_pid: int, fd: int, slots: int = 1) -> None:
        self._page = Page.open(os_pid, fd, _size(slots), "Q")
        self.view = self._page.words
        self.slots = range(0, slots * SLOT, SLOT)

    def read(self) -> tuple[int, int]:
        """(commands, errors) so far."""
        view = self.view
        return view[COMMANDS], view[ERRORS]

    def running(self) -> tuple[tuple[int, int], ...]:
        """The running commands' refs, each ``(origin serial, number)``."""
        view = self.view
        return tuple((view[RUN_ORIGIN + i], view[RUN_N + i]) for i in self.slots
                     if view[RUN_N + i] != 0)

    def uncounted(self) -> int:
        """How many commands are running and not counted yet (after a
        death: they died with the worker)."""
        view = self.view
        return sum(1 for i in self.slots if view[RUN_N + i] != 0 and view[RUN_COUNTED + i] == 0)

    def close(self) -> None:
        self._page.close()
