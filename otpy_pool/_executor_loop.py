"""The executors' own thread: one asyncio loop per executor, in which the
executor's runners drive the pool's caller coroutines (``_io.arun``), so
any number of pending futures cost no thread beyond this one.

``Backlog`` is the executor's queue of pending work, touched only in the
loop's thread: other threads hand it work through ``LoopThread.call``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, Callable, Coroutine


class LoopThread:
    """A daemon thread running ``main()`` in a loop of its own, then ``after()``
    (the executor's cleanup: a pool to stop), then closing the loop."""

    def __init__(self, name: str, main: Callable[[], Coroutine[Any, Any, Any]],
                 after: Callable[[], None]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(main, after), name=name,
                                       daemon=True)  # the executor's atexit hook ends it
        self.thread.start()

    def _run(self, main: Callable[[], Coroutine[Any, Any, Any]],
             after: Callable[[], None]) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(main())
        finally:
            try:
                after()
            finally:
                self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the loop's thread, soon (callable from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for ``main`` and ``after`` to end; True if they did."""
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        return not self.thread.is_alive()


class Backlog:
    """Pending work, first in first out, for the loop's runners. A runner
    waiting in ``take`` is handed new work at once (so work submitted just
    before a ``shutdown(cancel_futures=True)`` that a runner was free for
    runs); ``take`` returns None once the backlog is closed and empty."""

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.handed: set = set()  # handed to a waiter that has not resumed yet
        self.closed = False

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._hand_out()

    def put_back(self, items: list) -> None:
        """Work taken that never ran: first in line again."""
        self.items.extendleft(reversed(items))
        self._hand_out()

    def close(self, drop: Callable[[Any], bool]) -> None:
        """No more work will come: pending items for which ``drop`` is true
        are removed (and ``drop`` is applied to those handed out but not yet
        taken up), the rest still run; runners left without work get None."""
        self.closed = True
        self.items = collections.deque(item for item in self.items if not drop(item))
        for item in self.handed:
            drop(item)
        self._hand_out()
        while self.waiters:
            _resolve(self.waiters.popleft(), None)

    async def take(self) -> Any:
        """The oldest item, waiting for one; None once closed and empty."""
        if self.items:
            return self.items.popleft()
        if self.closed:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        item = await waiter
        self.handed.discard(item)
        return item

    def _hand_out(self) -> None:
        while self.items and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                item = self.items.popleft()
                self.handed.add(item)
                waiter.set_result(item)


def _resolve(waiter: asyncio.Future, value: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)
