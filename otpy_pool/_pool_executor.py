"""``concurrent.futures`` over a pool's workers: ``pool.executor()`` for a
pool you have, and the base of ``otpy_pool.ProcessPoolExecutor``.

Each submitted function runs as the workers' built-in command
(``otpy_pool.function``). No thread per task: ``max_workers`` runners, in
one asyncio loop of the executor's own thread (``_executor_loop``), take
pending work in turn, check a worker out (waiting as long as it takes: no
PoolTimeout) and run it there through the pool's caller coroutines. When
work is queued behind every runner, a runner sends ``WINDOW`` tasks to its
worker at once, pipelined as ``execute_many`` does. A worker's death fails
only the task it was running (``BrokenWorker``); tasks it never started
run on another worker. The runner of an executor that owns its pool keeps
its worker between tasks (one round trip per task); over a shared pool it
returns the worker when no work is pending.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import itertools
import pickle
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import otpy
from otpy import lowlevel

from . import _caller, _checks
from ._caller import RETRIES, UNSET
from ._calls import NotRun
from ._errors import (BrokenWorker, CommandTimeout, InitializerFailed, PoolUnavailable,
                      TaskNotPicklable, WorkerCrashed)
from ._executor_loop import Backlog, LoopThread
from ._io import arun
from ._pipeline import Pipeline
from ._protocol import CHECKIN, DEAD, ERROR, FUNCTION, OK, REPLACE, RETURN

if TYPE_CHECKING:
    from ._pool import Pool

E = TypeVar("E", bound=BaseException)
WINDOW = 4  # tasks sent to one worker at once when work is queued behind every runner


class _Task:
    """A submitted function: its Future, its call (fn, args, kwargs), and how
    many workers died before it could start on them."""

    __slots__ = ("future", "call", "tries")

    def __init__(self, future: concurrent.futures.Future, call: tuple) -> None:
        self.future: Any = future
        self.call: Any = call
        self.tries = 0

    def settle(self, outcome: tuple) -> None:
        """Its outcome, ``(OK, value)`` or ``(ERROR, exc)``, to its Future;
        then the task lets go of both (its result is the caller's alone)."""
        if outcome[0] == OK:
            self.future.set_result(outcome[1])
        else:
            self.future.set_exception(outcome[1])
        self.future = self.call = None


class PoolExecutor(concurrent.futures.Executor):
    """submit / map / shutdown, as ``concurrent.futures``' executors, over a
    Pool's workers. ``max_workers``: tasks running at once (default: the
    pool's size plus its overflow)."""

    def __init__(self, pool: "Pool", max_workers: int | None = None, *,
                 broken: BaseException | None = None) -> None:
        if max_workers is None:
            max_workers = 1 if broken is not None else pool._settings().capacity
        self.pool = pool
        self._max_workers = check_max_workers(max_workers)
        self._lock = threading.Lock()
        self._shutdown = False
        self._broken: BaseException | bool = broken or False  # the stdlib's name and sense
        self._backlog = Backlog()
        self._incoming: list[_Task] = []  # submitted, not yet in the backlog (under _lock)
        self._loop: LoopThread | None = None
        if broken is None:
            self._loop = LoopThread(f"otpy_pool.executor:{pool.name}", self._main, self._after)
        _live.add(self)

    # ---- the caller's side (any thread) -------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` on a worker; its Future."""
        if not callable(fn):
            raise TypeError(f"submit needs a callable, not {fn!r}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._check_open()
            self._incoming.append(_Task(future, (fn, args, kwargs)))
            if len(self._incoming) == 1:  # the loop is told once per batch of submits
                assert self._loop is not None
                self._loop.call(self._take_incoming)
        return future

    def _take_incoming(self) -> None:
        """In the loop's thread: what was submitted joins the backlog."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for task in incoming:
            self._backlog.put(task)

    def _check_open(self) -> None:
        if self._broken:
            raise self._broken  # type: ignore[misc]
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """As ``Executor.map``; with ``chunksize`` > 1 each task runs ``fn``
        over a chunk of that many inputs (fewer round trips for tiny tasks)."""
        if _checks.count(chunksize, "chunksize", minimum=1) == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = (_packed(chunk) for chunk in _chunks(zip(*iterables), chunksize))
        results = super().map(functools.partial(_run_chunk, fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(map(_unpacked, results))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; ``cancel_futures``: pending work no worker took is
        cancelled (before this returns). ``wait``: return once the rest has
        run and the executor's thread (and, for ProcessPoolExecutor, its
        pool) is gone."""
        with self._lock:
            self._shutdown = True
            loop = self._loop
            closed = threading.Event()
            try:
                if loop is not None:
                    loop.call(self._close, cancel_futures, closed)
            except RuntimeError:  # its loop has ended already
                loop = None
        while loop is not None and not closed.wait(0.1) and loop.thread.is_alive():
            pass  # the loop's thread closes the backlog at once: wait for that, or its end
        if wait and loop is not None:
            loop.join()

    # ---- the runners (the executor's loop thread) ---------------------------------------

    def _close(self, cancel_futures: bool, closed: threading.Event) -> None:
        # cancel() refuses a running task (put back after its worker died
        # before starting it): that one stays, to run
        self._backlog.close(lambda task: cancel_futures and task.future.cancel())
        closed.set()

    async def _main(self) -> None:
        await asyncio.gather(*(self._runner() for _ in range(self._max_workers)))

    def _after(self) -> None:
        """After the last runner: what the executor owns is released (a subclass's pool)."""

    async def _runner(self) -> None:
        batch = await self._take()
        while batch is not None:
            current = batch
            try:
                batch = await self._serve(current)
            except Exception as exc:  # a bug of ours: its tasks fail with it, no future hangs
                lowlevel.logger().error("executor runner failed", error=repr(exc),
                                        exception=lowlevel.traceback_text(exc))
                for task in current:
                    if task.future is not None and not task.future.done():
                        task.settle((ERROR, exc))
                batch = await self._take()

    async def _take(self) -> list | None:
        """Pending work that was not cancelled: one task, or up to WINDOW when
        more is queued than the runners can take one by one; None: shut down."""
        batch: list = []
        while not batch:
            item = await self._backlog.take()
            if item is None:
                return None
            queued = len(self._backlog.items)
            more = min(WINDOW - 1, queued) if queued >= self._max_workers else 0
            for task in [item] + [self._backlog.items.popleft() for _ in range(more)]:
                # a task put back (its worker died first) is running already
                if task.future.running() or task.future.set_running_or_notify_cancel():
                    batch.append(task)
        return batch

    async def _serve(self, batch: list) -> list | None:
        """Check a worker out, run work on it, check it back in; returns the
        work to run next (None: shut down)."""
        token = otpy.make_ref()
        try:
            worker = await self._checkout(token)
        except Exception as exc:  # no worker can come (PoolUnavailable), no pool
            for task in batch:
                task.settle((ERROR, self._as_stdlib(exc)))
            return await self._take()
        how, left = REPLACE, batch
        try:
            how, left = await self._work(worker, token, batch)
        finally:
            self.pool._cast((CHECKIN, token, how))
        left = _retried(left)
        if left:
            self._backlog.put_back(left[1:])  # another runner may take them meanwhile
            return left[:1]
        return await self._take()

    async def _work(self, worker: otpy.Pid, token: Any, batch: list) -> tuple[str, list]:
        """Run batches on the checked-out worker while there is work (and,
        if the executor keeps its workers, while it waits for more): how to
        check the worker in, and the work it never ran."""
        ran = 0
        timeout = await arun(_caller.run_timeout(self.pool, UNSET))
        while True:
            batch = self._within_recycle(batch, ran)
            left, gone = await self._run_batch(worker, token, batch, timeout)
            ran += len(batch) - len(left)
            if gone:
                return DEAD, left
            if self._worn_out(worker, ran):
                return RETURN, []
            if not self._backlog.items and not self._keeps_workers():
                return RETURN, []
            next_batch = await self._take()
            if next_batch is None:
                return RETURN, []
            batch = next_batch

    async def _checkout(self, token: Any) -> otpy.Pid:
        """A worker, held under ``token``, waiting as long as it takes."""
        return await arun(_caller.checkout(self.pool, token, None))

    def _keeps_workers(self) -> bool:
        """Whether a runner keeps its worker while it waits for work: only an
        executor that owns its pool (nobody else waits for its workers)."""
        return False

    def _within_recycle(self, batch: list, ran: int) -> list:
        """A subclass recycling workers sends no more than a worker may run."""
        return batch

    def _worn_out(self, worker: otpy.Pid, ran: int) -> bool:
        """Whether ``worker`` ran all a worker may (a subclass recycling workers)."""
        return False

    async def _run_batch(self, worker: otpy.Pid, token: Any, batch: list,
                         timeout: float | None) -> tuple[list, bool]:
        """Run ``batch`` on ``worker``, settling each future: the work that
        never ran (to run elsewhere), and whether the worker is gone."""
        if len(batch) == 1:
            return await self._run_one(worker, token, batch[0], timeout)
        settle = _Settle(self, batch)
        try:
            todo, gone = await arun(Pipeline(
                self.pool, worker, token, None, FUNCTION, [task.call for task in batch],
                list(range(len(batch))), settle, timeout, len(batch)).run())
        except Exception as exc:  # the pool gone, say: every unsettled task fails
            todo, gone = settle.fail_rest(exc), True
        return [batch[i] for i in todo], gone

    async def _run_one(self, worker: otpy.Pid, token: Any, task: _Task,
                       timeout: float | None) -> tuple[list, bool]:
        try:
            value = await arun(_caller.run_on(self.pool, worker, token, FUNCTION, task.call, {},
                                              timeout))
        except NotRun:
            return [task], True
        except (WorkerCrashed, CommandTimeout) as exc:
            task.settle((ERROR, self._as_stdlib(exc)))
            return [], True
        except (Exception, SystemExit) as exc:  # the function's own (sys.exit too), or
            task.settle((ERROR, self._as_stdlib(exc)))  # its input could not be sent
            return [], False
        task.settle((OK, value))
        return [], False

    def _as_stdlib(self, exc: BaseException) -> BaseException:
        """Our errors in the forms code written for concurrent.futures catches."""
        if isinstance(exc, WorkerCrashed) and not isinstance(exc, BrokenWorker):
            return _chained(BrokenWorker(exc.reason, str(exc)), exc)
        if isinstance(exc, otpy.SerializationError) and not isinstance(exc, TaskNotPicklable):
            return _chained(TaskNotPicklable(str(exc)), exc)
        return exc


class _Settle:
    """The pipeline's outcomes (``out[i] = outcome``) settle the batch's futures."""

    def __init__(self, executor: PoolExecutor, batch: list) -> None:
        self.executor, self.batch = executor, batch
        self.settled: set[int] = set()

    def __setitem__(self, i: int, outcome: tuple) -> None:
        self.settled.add(i)
        if outcome[0] != OK:
            outcome = (ERROR, self.executor._as_stdlib(outcome[1]))
        self.batch[i].settle(outcome)

    def fail_rest(self, exc: BaseException) -> list:
        for i in range(len(self.batch)):
            if i not in self.settled:
                self[i] = (ERROR, exc)
        return []


def _retried(tasks: list) -> list:
    """Tasks whose worker died before they started, to run on another one;
    one that met RETRIES such deaths fails instead (its input may be what
    kills a worker as it arrives)."""
    again = []
    for task in tasks:
        task.tries += 1
        if task.tries < RETRIES:
            again.append(task)
        else:
            task.settle((ERROR, BrokenWorker(None, (
                f"{RETRIES} workers died before they could start this task: "
                "its input may be what kills them"))))
    return again


def check_max_workers(value: Any) -> int:
    """``max_workers`` as the standard library checks it (and never a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"max_workers must be an int, not {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError("max_workers must be greater than 0")
    return value


def _chained(new: E, cause: BaseException) -> E:
    new.__cause__ = cause
    return new


def _chunks(calls: Iterator[tuple], size: int) -> Iterator[list]:
    """The argument tuples, ``size`` at a time."""
    while True:
        chunk = list(itertools.islice(calls, size))
        if not chunk:
            return
        yield chunk


def _run_chunk(fn: Callable[..., Any], chunk: Any) -> Any:
    """In a worker: ``fn`` over a chunk of argument tuples; the results packed."""
    return _packed([fn(*args) for args in _unpacked(chunk)])


def _packed(items: list) -> Any:
    """A chunk's list as one pickle (bytes): otpy's wire then carries one
    object, not one per item. A list pickle cannot take (lambdas, say)
    travels as it is, and otpy's wire falls back to dill for it."""
    try:
        return pickle.dumps(items, 5)
    except Exception:
        return items


def _unpacked(items: Any) -> list:
    return pickle.loads(items) if type(items) is bytes else items


def as_initializer_failure(exc: BaseException) -> InitializerFailed:
    """A pool that cannot start its workers, as the executor's BrokenExecutor."""
    cause = exc.cause if isinstance(exc, PoolUnavailable) else exc
    return _chained(InitializerFailed(cause, f"the executor's initializer failed: "
                                             f"{type(cause).__name__}: {cause}"), exc)


# ---- the interpreter's exit: executors still open run what is pending, then stop ------

_live: "weakref.WeakSet[PoolExecutor]" = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    """Registered after otpy's own hook (otpy is imported first), so it runs
    before the node stops: pending work ends (that of executors shut down
    without waiting too), pools stop in order."""
    global _exiting
    _exiting = True
    for executor in list(_live):
        executor.shutdown(wait=True)


atexit.register(_at_exit)
