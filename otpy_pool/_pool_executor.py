"""``concurrent.futures`` over a pool's workers: ``pool.executor()`` for a
pool you have, and the base of ``otpy_pool.ProcessPoolExecutor``.

Each submitted function runs as the workers' built-in command
(``otpy_pool.function``). In the steady state a task is one round trip
with no other thread on its path: ``submit`` claims a free worker (see
_claims) and sends it the task from the submitting thread, and the reply
is taken by whoever needs it first: ``result()`` in its own thread, else
the executor's loop (at once for ``wait``, ``as_completed`` and done
callbacks; within two SWEEPs for a task nobody asks about, so that its
claim never keeps the worker from others for long).

When no worker is free to claim, or work is queued already, no thread per
task either: ``max_workers`` runners, in one asyncio loop of the
executor's own thread (``_executor_loop``), take pending work in turn,
check a worker out (waiting as long as it takes: no PoolTimeout) and run
it there through the pool's caller coroutines; a task stays cancellable
until its runner has a worker. When work is queued behind every runner, a
runner sends ``WINDOW`` tasks to its worker at once, pipelined as
``execute_many`` does, and returns its worker when no work is pending (so
that it is free for claims again). A worker's death fails only the task it
was running (``BrokenWorker``); tasks it never started run on another
worker.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import itertools
import pickle
import sys
import threading
import time
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
from ._io import aresume, arun, resume, run, start
from ._pipeline import Pipeline
from ._protocol import CHECKIN, DEAD, ERROR, FUNCTION, NOT_RUN, OK, REPLACE, RETURN

if TYPE_CHECKING:
    from ._pool import Pool

E = TypeVar("E", bound=BaseException)
WINDOW = 4  # tasks sent to one worker at once when work is queued behind every runner
# How often the loop takes up the replies of claimed tasks nobody asked
# about yet, while there are any (and for IDLE_SWEEPS after): each such
# task holds its worker's claim until its reply is taken.
SWEEP = 0.005
IDLE_SWEEPS = 100


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


class _Future(concurrent.futures.Future):
    """A task's Future. While ``parked`` (sent by ``submit`` to a worker it
    claimed: the task, the coroutine awaiting its reply, that reply), its
    reply is taken by the first who needs it: ``result()`` or
    ``exception()`` in the calling thread; else the executor's loop, asked
    at once by ``add_done_callback``, ``wait`` and ``as_completed`` (which
    install their waiters in ``_waiters``), and by the sweep otherwise."""

    def __init__(self, executor: "PoolExecutor") -> None:
        super().__init__()
        self._executor = executor
        self._waiters = _Waiters(self)
        self.parked: tuple | None = None
        self.parked_at = 0  # the executor's sweep count when parked
        self.driving = False  # a thread or the loop is taking its reply

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._reply_here(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._reply_here(timeout))

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future], object]) -> None:
        super().add_done_callback(fn)
        self.wanted()

    def wanted(self) -> None:
        """Someone waits for this task without taking its reply: the loop does."""
        if self.parked is not None:
            self._executor._want(self)

    def _reply_here(self, timeout: float | None) -> float | None:
        """Take a parked task's reply in this thread (for at most ``timeout``):
        what is left of ``timeout``."""
        if self.parked is None:
            return timeout
        started = time.monotonic()
        self._executor._reply_here(self, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


class _Waiters(list):
    """A Future's waiters: ``wait`` and ``as_completed`` append theirs here."""

    def __init__(self, future: _Future) -> None:
        super().__init__()
        self.future = future

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        self.future.wanted()


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
        self._claiming = True  # submit may send to a worker it claims (a subclass may not)
        self._parked: dict[_Future, None] = {}  # tasks sent to claimed workers (under _lock)
        self._sending = 0  # submits claiming and sending now (under _lock)
        self._sweeps = 0
        self._idle_sweeps = 0
        self._sweeping = False
        self._adopted: set[asyncio.Task] = set()  # the loop's tasks taking parked replies
        self._waiting: set[_Task] = set()  # taken by runners waiting for a worker (pending)
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
        future = _Future(self)
        task = _Task(future, (fn, args, kwargs))
        with self._lock:
            self._check_open()
            # work queued already comes first: it is not overtaken by a claim
            # (the backlog's length read here is a snapshot: a hint)
            if not self._claiming or self._incoming or self._backlog.items:
                self._enqueue(task)
                return future
            self._sending += 1  # the loop does not end meanwhile (_main)
        sent = None
        try:
            sent = self._send_claimed(task)
        finally:  # (interrupted, it is neither sent nor queued: submit raised)
            with self._lock:
                self._sending -= 1
                if sent is False:
                    self._enqueue(task)
        return future

    def _enqueue(self, task: _Task) -> None:
        """To the backlog, for the runners (lock held)."""
        self._incoming.append(task)
        if len(self._incoming) == 1:  # the loop is told once per batch of submits
            assert self._loop is not None
            self._loop.call(self._take_incoming)

    # ---- tasks sent to claimed workers ----------------------------------------------------

    def _send_claimed(self, task: _Task) -> bool:
        """``task`` sent to a worker this process claims, from this thread:
        False if none is free now (or it died before it could start the
        task): the runners' way then."""
        future = task.future
        try:
            timeout = run(_caller.run_timeout(self.pool, UNSET))
            coroutine = _caller.run_claimed(self.pool, FUNCTION, task.call, {}, timeout)
            parked, value = start(coroutine)
        except Exception as exc:  # it could not be sent (TaskNotPicklable), no pool
            future.set_running_or_notify_cancel()
            task.settle((ERROR, self._as_stdlib(exc)))
            return True
        if not parked:
            return False  # None: no free worker; (NOT_RUN,): it died first
        with self._lock:  # (sent: parked at once, so that its claim is given back)
            future.set_running_or_notify_cancel()
            future.parked, future.parked_at = (task, coroutine, value), self._sweeps
            self._parked[future] = None
            if not self._sweeping:
                self._sweeping = True
                assert self._loop is not None
                self._loop.call(self._sweep)
        return True

    def _drive(self, future: _Future) -> tuple | None:
        """The parked task's (task, coroutine, pending reply), for the one
        caller that takes its reply now; None if another does, or did."""
        with self._lock:
            if future.parked is None or future.driving:
                return None
            future.driving = True
            return future.parked

    def _reply_here(self, future: _Future, timeout: float | None) -> None:
        """``future``'s reply taken in this thread, waiting at most ``timeout``
        (unless a thread or the loop is taking it already)."""
        parked = self._drive(future)
        if parked is None:
            return
        _, coroutine, pending = parked
        outcome: Any = lowlevel.NOT_YET
        try:
            outcome = resume(coroutine, pending, timeout)
        except BaseException as exc:
            if coroutine.cr_frame is None:  # it ended with that: the task's outcome
                self._settle_parked(future, None, exc)
            if not isinstance(exc, Exception):  # (a KeyboardInterrupt while it waited
                raise  # leaves it parked, for the loop: below)
            return
        finally:
            if outcome is lowlevel.NOT_YET and future.parked is not None:
                with self._lock:
                    future.driving = False
                future.wanted()  # given up on: the loop takes it if someone waits
        if outcome is not lowlevel.NOT_YET:
            self._settle_parked(future, outcome, None)

    def _want(self, future: _Future) -> None:
        """From any thread: the loop takes ``future``'s reply, soon."""
        try:
            assert self._loop is not None
            self._loop.call(self._adopt, future)
        except RuntimeError:  # the loop has ended: no task is parked any more
            pass

    def _adopt(self, future: _Future) -> None:
        """In the loop: ``future``'s reply taken by a task of the loop."""
        parked = self._drive(future)
        if parked is None:
            return
        _, coroutine, pending = parked
        assert self._loop is not None
        adopted = self._loop.loop.create_task(self._reply_in_loop(future, coroutine, pending))
        self._adopted.add(adopted)
        adopted.add_done_callback(self._adopted.discard)

    async def _reply_in_loop(self, future: _Future, coroutine: Any, pending: Any) -> None:
        try:
            outcome = await aresume(coroutine, pending)
        except BaseException as exc:
            self._settle_parked(future, None, exc)
            return
        self._settle_parked(future, outcome, None)

    def _settle_parked(self, future: _Future, outcome: tuple | None,
                       error: BaseException | None) -> None:
        """A parked task's end: its Future settled, or, if its worker died or
        retired before it started, the task to the runners (after shutdown
        too: the loop runs them before it ends). Unparked whatever happens."""
        assert future.parked is not None
        task = future.parked[0]
        again: list = []
        try:
            if error is not None:
                task.settle((ERROR, self._as_stdlib(error)))
            elif outcome is not None and outcome[0] == NOT_RUN:
                again = _retried([task])
            else:
                assert outcome is not None
                task.settle(outcome if outcome[0] == OK else
                            (ERROR, self._as_stdlib(outcome[1])))
        finally:
            with self._lock:  # in one hold: the loop sees it parked or queued (_main)
                for queued in again:
                    self._enqueue(queued)
                future.parked = None
                future.driving = False
                del self._parked[future]

    def _sweep(self) -> None:
        """In the loop, every SWEEP while tasks are parked: the replies of
        those parked since before the last sweep are taken up here."""
        with self._lock:
            self._sweeps += 1
            stale = [future for future in self._parked if future.parked_at < self._sweeps - 1]
            self._idle_sweeps = 0 if self._parked else self._idle_sweeps + 1
            if self._idle_sweeps >= IDLE_SWEEPS:
                self._sweeping = False
            going_on = self._sweeping
        for future in stale:
            self._adopt(future)
        if going_on:
            assert self._loop is not None
            self._loop.loop.call_later(SWEEP, self._sweep)

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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._interrupt()
        else:
            self.shutdown(wait=True)
        return False

    def _interrupt(self) -> None:
        """Ctrl-C: the program is ending, so nothing waits for the work.
        What no worker took is cancelled; what runs is left to the node's
        orderly stop (a subclass that owns its workers kills them, as a
        terminal's Ctrl-C kills the standard library's)."""
        self.shutdown(wait=False, cancel_futures=True)

    # ---- the runners (the executor's loop thread) ---------------------------------------

    def _close(self, cancel_futures: bool, closed: threading.Event) -> None:
        self._backlog.close(lambda task: cancel_futures and _cancel(task))
        if cancel_futures:  # and those a runner holds while it waits for a worker
            for task in self._waiting:
                _cancel(task)
        closed.set()

    async def _main(self) -> None:
        while True:
            await asyncio.gather(*(self._runner() for _ in range(self._max_workers)))
            # shut down: the tasks sent to claimed workers (and being sent) end
            # first; one that came back (its worker died before it started)
            # is run, then
            while True:
                self._take_incoming()
                with self._lock:
                    parked = list(self._parked)
                    busy = parked or self._sending or self._incoming
                if not busy:
                    break
                for future in parked:
                    self._adopt(future)
                await asyncio.sleep(SWEEP)
            if not self._backlog.items:
                return

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
                self._waiting.difference_update(current)
                for task in current:
                    if task.future is not None and not task.future.done():
                        task.settle((ERROR, exc))
                batch = await self._take()

    async def _take(self) -> list | None:
        """Pending work that was not cancelled: one task, or up to WINDOW when
        more is queued than the runners can take one by one; None: shut down.
        It stays pending (cancellable) until ``_started``: the runner may
        wait for a worker first."""
        batch: list = []
        while not batch:
            item = await self._backlog.take()
            if item is None:
                return None
            queued = len(self._backlog.items)
            more = min(WINDOW - 1, queued) if queued >= self._max_workers else 0
            for task in [item] + [self._backlog.items.popleft() for _ in range(more)]:
                if not _dropped(task):
                    batch.append(task)
        self._waiting.update(batch)
        return batch

    def _started(self, batch: list) -> list:
        """The tasks of ``batch`` that start now, a worker in hand: running,
        unless cancelled meanwhile (a task put back, its worker dead before
        it started, is running already)."""
        self._waiting.difference_update(batch)
        return [task for task in batch if not _dropped(task) and
                (task.future.running() or task.future.set_running_or_notify_cancel())]

    async def _serve(self, batch: list) -> list | None:
        """Check a worker out, run work on it, check it back in; returns the
        work to run next (None: shut down)."""
        token = otpy.make_ref()
        try:
            worker = await self._checkout(token)
        except Exception as exc:  # no worker can come (PoolUnavailable), no pool
            for task in self._started(batch):
                task.settle((ERROR, self._as_stdlib(exc)))
            return await self._take()
        batch = self._started(batch)
        if not batch:  # all cancelled while it waited
            self.pool._cast((CHECKIN, token, RETURN))
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
            batch = self._started(next_batch)

    async def _checkout(self, token: Any) -> otpy.Pid:
        """A worker, held under ``token``, waiting as long as it takes."""
        return await arun(_caller.checkout(self.pool, token, None))

    def _keeps_workers(self) -> bool:
        """Whether a runner keeps its worker while it waits for work (a
        subclass counting each worker's tasks)."""
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
        if not batch:  # cancelled between its take and its start
            return [], False
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


def _dropped(task: _Task) -> bool:
    """Whether a pending task is dropped: shut down with cancel_futures, or
    cancelled by its caller (its waiters are told now, as the standard
    library's executors tell them when they reach a cancelled task)."""
    future = task.future
    if future is None:
        return True
    if future.running() or not future.cancelled():
        return False
    future.set_running_or_notify_cancel()
    task.future = task.call = None
    return True


def _cancel(task: _Task) -> bool:
    """shutdown(cancel_futures=True): a task no worker took is cancelled and
    dropped (its waiters told); one running already (put back after its
    worker died before starting it) stays, to run."""
    return task.future is not None and task.future.cancel() and _dropped(task)


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
    without waiting too), pools stop in order. Not after Ctrl-C: the
    program ends then, its executors' work with it (see ``_interrupt``)."""
    global _exiting
    _exiting = True
    # (the interpreter's prompt keeps the last error it printed: a Ctrl-C
    # typed there long before does not end the session's work)
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt) \
        and not (hasattr(sys, "ps1") or sys.flags.interactive)
    for executor in list(_live):
        if interrupted:
            executor._interrupt()
        else:
            executor.shutdown(wait=True)


atexit.register(_at_exit)
