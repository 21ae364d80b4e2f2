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
    """Pending work, first in first out, for the loop's runners: ``take``
    waits for some (None once closed and empty); ``close`` wakes them all."""

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.closed = False

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._wake(1)

    def put_back(self, items: list) -> None:
        """Work taken that never ran: first in line again."""
        self.items.extendleft(reversed(items))
        self._wake(len(items))

    def close(self) -> list:
        """No more work will come: returns what was still pending, removed."""
        self.closed = True
        left = list(self.items)
        self.items.clear()
        self._wake(len(self.waiters))
        return left

    def finish(self) -> None:
        """No more work will come; what is pending still runs."""
        self.closed = True
        self._wake(len(self.waiters))

    async def take(self) -> Any:
        """The oldest item, waiting for one; None once closed and empty."""
        while not self.items:
            if self.closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        return self.items.popleft()

    def _wake(self, n: int) -> None:
        while n > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1
