"""``pool.executor()``: concurrent.futures over the pool's workers.

Each submitted function runs as the workers' built-in command (a stateless
execute) from a thread of the caller, so a worker's death fails only the
future of the function it was running (WorkerCrashed), never the executor.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any, Callable

from ._protocol import FUNCTION

if TYPE_CHECKING:
    from ._pool import Pool


class PoolExecutor(concurrent.futures.Executor):
    """submit / map / shutdown, as ProcessPoolExecutor's, over a Pool."""

    def __init__(self, pool: "Pool", max_workers: int | None = None) -> None:
        if max_workers is None:
            max_workers = pool._settings().capacity  # as many as the pool can serve at once
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        self.pool = pool
        # Threads only wait for their worker's reply: cheap. More than the
        # pool's workers would only wait in its queue (and time out there).
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers, thread_name_prefix=f"otpy_pool:{pool.name}")

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        if not callable(fn):
            raise TypeError(f"submit needs a callable, not {fn!r}")
        return self._threads.submit(self.pool.execute, FUNCTION, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)
