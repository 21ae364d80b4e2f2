"""``otpy_pool.ProcessPoolExecutor``: the standard library's executor, with
the standard library's signature, over a pool of its own.

It starts its pool at construction (``max_workers`` workers, each running
``initializer(*initargs)`` as it starts) and stops it at ``shutdown()`` or
at the interpreter's exit. A worker's death fails only the task it was
running; the pool replaces the worker and the executor keeps serving.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any, Callable

import otpy
from otpy import lowlevel

from . import _checks
from ._caller import RETRIES
from ._errors import PoolUnavailable, start_error
from ._pool import Pool
from ._pool_executor import PoolExecutor, as_initializer_failure, check_max_workers
from ._protocol import CHECKIN, REPLACE, RETURN
from ._worker import Worker


class ExecutorWorker(Worker):
    """A ProcessPoolExecutor's worker: no commands of its own (it runs the
    submitted functions); ``init`` runs the executor's initializer."""

    def init(self, initializer: Callable[..., Any] | None = None, initargs: tuple = ()) -> None:
        if initializer is not None:
            initializer(*initargs)


class ProcessPoolExecutor(PoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` on otpy: a worker's death
    fails only its own task (``BrokenWorker``), never the executor.

    ``max_workers``: the pool's size (default ``os.cpu_count()``);
    ``initializer(*initargs)`` runs in each worker as it starts (one that
    raises breaks the executor: ``InitializerFailed`` from ``submit``);
    ``max_tasks_per_child``: a worker that ran that many tasks is replaced.
    ``mp_context`` is accepted and ignored: otpy starts every worker from
    its own clean, single-threaded process (what "spawn" and "forkserver"
    are chosen for), at the cost of a fork.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None) -> None:
        size = check_max_workers(os.cpu_count() or 1 if max_workers is None else max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {initializer!r}")
        self._max_tasks = _checks.count(max_tasks_per_child, "max_tasks_per_child", minimum=1,
                                        none_ok=True)
        self._owns_pool = False
        self._interrupted = False
        self._worn: collections.deque[otpy.Pid] = collections.deque(maxlen=64)  # recycled
        pool, broken = _start_pool(size, initializer, tuple(initargs), self._max_tasks)
        self._owns_pool = broken is None
        super().__init__(pool, size, broken=broken)
        # claimed workers count their own tasks: exact recycling is the runners'
        self._claiming = self._max_tasks is None

    def _after(self) -> None:
        """The last runner ended: the pool stops (its workers first)."""
        if self._owns_pool:
            self._owns_pool = False
            try:
                self.pool.stop()
            except otpy.OtpyError:  # stopped already: the node is going away
                pass

    def _interrupt(self) -> None:
        """Ctrl-C: its workers are killed, as the standard library's are by
        the terminal's SIGINT (theirs share its process group; otpy's run in
        groups of their own): the running tasks fail, the program ends."""
        try:
            if self._owns_pool and not self._interrupted:
                self._interrupted = True
                for worker in self.pool.workers():
                    lowlevel.kill(worker, ("shutdown", "interrupted"))
        except otpy.OtpyError:  # its pool is stopped already (the node going away)
            pass
        finally:
            super()._interrupt()

    def _keeps_workers(self) -> bool:
        # recycling: a runner keeps its worker, counting its tasks; else a
        # worker returned is free for submit's claims (one round trip per task)
        return self._max_tasks is not None

    def _within_recycle(self, batch: list, ran: int) -> list:
        if self._max_tasks is None or len(batch) <= self._max_tasks - ran:
            return batch
        room = self._max_tasks - ran
        self._backlog.put_back(batch[room:])
        return batch[:room]

    def _worn_out(self, worker: otpy.Pid, ran: int) -> bool:
        """Its worker ran ``max_tasks_per_child`` tasks: it told the pool,
        which retires it once it is returned (see ``_checkout``)."""
        if self._max_tasks is None or ran < self._max_tasks:
            return False
        self._worn.append(worker)
        return True

    async def _checkout(self, token: Any) -> otpy.Pid:
        """A worker that has not run its ``max_tasks_per_child`` tasks. One
        that has, returned before the pool heard it is worn out (the worker's
        word and our return reach the pool's server by different ways), may
        come back: it is returned again, until the pool has retired it."""
        for _ in range(RETRIES):
            worker = await super()._checkout(token)
            if worker not in self._worn:
                return worker
            self.pool._cast((CHECKIN, token, RETURN))
        self.pool._cast((CHECKIN, token, REPLACE))  # never heard: replaced at once
        return await super()._checkout(token)

    def _as_stdlib(self, exc: BaseException) -> BaseException:
        if isinstance(exc, PoolUnavailable):  # its workers' init is the initializer
            return as_initializer_failure(exc)
        return super()._as_stdlib(exc)


def _start_pool(size: int, initializer: Any, initargs: tuple,
                max_tasks: int | None) -> tuple[Pool, BaseException | None]:
    """The executor's pool, or (a handle on nothing, the executor's
    InitializerFailed) if its first workers could not start."""
    try:
        pool = Pool.start_link(ExecutorWorker, (initializer, initargs), size=size,
                               checkout_timeout=None, max_commands=max_tasks,
                               name=f"otpy_pool.ProcessPoolExecutor.{os.urandom(4).hex()}")
    except otpy.StartError as exc:
        cause = start_error(exc)
        # as the standard library's executor says it (its logger, CRITICAL, the traceback)
        logging.getLogger("concurrent.futures").critical(
            "the executor's initializer raised in a worker: the executor is broken",
            exc_info=cause if isinstance(cause, BaseException) else None)
        return Pool("otpy_pool.ProcessPoolExecutor.broken"), as_initializer_failure(cause)
    return pool, None
