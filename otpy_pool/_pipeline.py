"""``execute_many``'s pipeline: a batch of one command sent to one worker
without waiting, up to ``window`` unanswered, the answers taken from the
caller's mailbox by ref while more are sent.

``Pipeline`` is one worker's share of a batch; ``run_batch`` runs a batch
on the session's worker (or a checked-out one), again on the next worker
for the entries that never ran (the worker died, or moved the session).
Commands are calls in otpy's call convention, each with its own ref; a
sync worker runs them in order, so only the oldest unanswered one can have
been running when it died; an async worker may have been running several
(its counts page says which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import otpy
from otpy import lowlevel

from . import _caller
from ._caller import MARGIN, RETRIES
from ._calls import NotRun, run_call
from ._errors import CommandTimeout, PoolError, SessionLost, WorkerCrashed, duration
from ._io import Receive, Send
from ._protocol import ERROR, LOST, MOVED, UNBOUND
from ._pool_server import DOWN_WAIT

if TYPE_CHECKING:
    from ._pool import Pool

PENDING = (ERROR, None)  # an entry's outcome until it has one


class Outcomes(Protocol):
    """Where a pipeline files each entry's outcome: a list, or an executor's
    batch that settles a Future per entry as its answer comes."""

    def __setitem__(self, i: int, outcome: tuple) -> None: ...


class Pipeline:
    """Runs ``todo`` (indexes into ``calls``) on ``worker``, filing each
    outcome in ``out``; ``run()`` returns the indexes that never ran (to run
    again elsewhere) and whether the worker is gone. Sends never block
    (timeout 0) once a command is outstanding: a full buffer only means
    reading answers first, so two big payloads cannot stall each other."""

    def __init__(self, pool: "Pool", worker: otpy.Pid, token: Any, sid: Any, command: str,
                 calls: list, todo: list, out: Outcomes, timeout: float | None,
                 window: int) -> None:
        self.pool, self.worker, self.token, self.sid = pool, worker, token, sid
        self.command, self.calls, self.todo, self.out = command, calls, todo, out
        self.timeout, self.window = timeout, window
        self.pending: dict[otpy.Ref, int] = {}  # in the order sent: the worker runs them so
        self.retry: list[int] = []  # answered "not here": to run on the session's next worker
        self.sent = 0  # how much of todo was sent (or failed to be)
        self.mref: otpy.Ref | None = None

    async def run(self) -> tuple[list, bool]:
        self.mref = otpy.monitor(self.worker)
        try:
            while True:
                await self.send_window()
                if not self.pending:
                    return self.retry + self.todo[self.sent:], False
                try:
                    answer = await Receive(self.is_answer, self.timeout)
                except otpy.Timeout:
                    return await self.timed_out(), True
                if type(answer) is otpy.Down:
                    self.mref = None
                    return await self.worker_down(answer.reason), True
                self.take_answer(answer)
        finally:
            self.close()

    def is_answer(self, m: Any) -> bool:
        return (type(m) is tuple and len(m) == 3 and m[1] in self.pending) or \
            (type(m) is otpy.Down and m.ref == self.mref)

    async def send_window(self) -> None:
        """Send until ``window`` are outstanding (none once one answered "not
        here": those sent are answered the same way, the rest go elsewhere)."""
        while self.sent < len(self.todo) and len(self.pending) < self.window and not self.retry:
            ref = otpy.make_ref()
            i = self.todo[self.sent]
            call = run_call(ref, self.sid, self.command, self.calls[i], {})
            try:
                if self.pending:
                    otpy.send(self.worker, call, timeout=0)  # never waits: answers first
                else:
                    await Send(self.worker, call, None)
            except otpy.Timeout:
                if self.pending:
                    return  # its buffer is full: read answers first
                raise
            except otpy.SerializationError as exc:
                self.out[i] = (ERROR, exc)
            else:
                self.pending[ref] = i
            self.sent += 1

    def take_answer(self, message: tuple) -> None:
        i = self.pending.pop(message[1])
        outcome = message[2]
        failed = lowlevel.failed_reply(outcome, self.worker)  # e.g. one we cannot decode
        if failed is not None:
            self.out[i] = (ERROR, failed)
        elif outcome[0] in (UNBOUND, MOVED):
            self.retry.append(i)  # never ran: again on the session's (new) worker
        elif outcome[0] == LOST:
            self.out[i] = (ERROR, SessionLost(self.sid, outcome[1]))
        else:
            self.out[i] = outcome

    async def worker_down(self, reason: Any) -> list:
        """The worker died: WorkerCrashed for the unanswered commands it was
        running, unless the worker says it had not started them. The rest
        never ran."""
        if not self.pending:
            return self.retry + self.todo[self.sent:]
        crashed = await self.ran_there(reason, list(self.pending.items()))
        for i in crashed:
            self.out[i] = (ERROR, WorkerCrashed(reason))
        return self.unanswered(crashed)

    async def ran_there(self, reason: Any, refs: list) -> list[int]:
        """Of ``refs`` (ref, index), in the order sent, the indexes the dead
        worker may have been running: a sync worker only the oldest."""
        if not await self.concurrent():
            refs = refs[:1]
        return [i for ref, i in refs
                if not await _caller.never_started(self.pool, self.worker, ref, reason)]

    async def concurrent(self) -> bool:
        """Whether the pool's workers are async (run several commands at once)."""
        return (await _caller.settings(self.pool)).cancel_grace is not None

    async def timed_out(self) -> list:
        """The oldest command ran past its timeout: CommandTimeout for it, its
        worker killed and replaced (its Down awaited); WorkerCrashed for the
        others it was running (an async worker's); the rest never ran."""
        (ref, first), *others = self.pending.items()
        self.out[first] = (ERROR, CommandTimeout(
            f"command {self.command!r} ran past {duration(self.timeout)}; "
            "its worker was replaced"))
        await _caller.deadline(self.pool, self.worker, self.token)
        mref = self.mref
        down = await Receive(lambda m: type(m) is otpy.Down and m.ref == mref, MARGIN + DOWN_WAIT)
        self.mref = None
        crashed = await self.ran_there(down.reason, others) if await self.concurrent() else []
        for i in crashed:
            self.out[i] = (ERROR, WorkerCrashed(down.reason))
        return self.unanswered([first, *crashed])

    def unanswered(self, answered: list[int]) -> list:
        """Every entry not in ``answered`` that has no outcome: in order."""
        return sorted(self.retry + [i for i in self.pending.values() if i not in answered]) + \
            self.todo[self.sent:]

    def close(self) -> None:
        if self.mref is not None:
            otpy.demonitor(self.mref, flush=True)
        if self.pending:  # answers that came after we gave up: not stray messages
            pending = self.pending
            lowlevel.flush(lambda m: type(m) is tuple and len(m) == 3 and m[1] in pending)


async def run_batch(pool: "Pool", command: str, calls: list, sid: Any, timeout: float | None,
                    window: int) -> list:
    """Every entry's outcome, ``(OK, value)`` or ``(ERROR, exc)``, in order:
    on the session's worker (moving with the session), or on one
    checked-out worker at a time (the next one if it dies)."""
    out: list = [PENDING] * len(calls)
    todo = list(range(len(calls)))
    stale = None
    for _ in range(RETRIES):
        if not todo:
            break
        if sid is None:
            todo = await _checked_out_share(pool, command, calls, todo, out, timeout, window)
            continue
        cache = _caller.session_cache(pool)
        worker = await _caller.bound(pool, cache, sid, stale)
        todo, gone = await Pipeline(pool, worker, None, sid, command, calls, todo, out,
                                    timeout, window).run()
        if todo or gone:
            stale = _caller.forget(cache, sid, worker)
    for i in todo:
        out[i] = (ERROR, PoolError(f"pool {pool.name!r}: no worker could run {command!r}"))
    return out


async def _checked_out_share(pool: "Pool", command: str, calls: list, todo: list, out: list,
                             timeout: float | None, window: int) -> list:
    """One checked-out worker's share; a worker that died goes back as dead
    (the server takes its Down rather than reuse it)."""
    wait = (await _caller.settings(pool)).checkout_timeout
    try:
        async with _caller.checked_out(pool, wait) as (worker, token):
            todo, gone = await Pipeline(pool, worker, token, None, command, calls, todo, out,
                                        timeout, window).run()
            if gone:
                raise NotRun()
    except NotRun:
        pass
    return todo
