"""The pools users would pick instead of otpy_pool, measured the same way.

Each peer runs a no-op task with 2 workers: the one-task round trip (submit
and wait for the result), the burst rate (submit many, then wait for all),
and what happens when a busy worker is SIGKILLed (how long until its task's
caller learns anything, and whether the pool still serves). Peers are an
optional extra (``pip install 'otpy[bench]'``): a peer that is not installed
is reported as skipped, never as a failure.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import os
import signal
import tempfile
import time
from typing import Any, Callable

_ns = time.perf_counter_ns
KILL_WAIT = 15.0  # billiard needs ~11 s to notice; beyond this we report "no outcome"


def noop(x: Any = None) -> Any:
    return x


def busy_reporting(path: str) -> None:
    """Write this worker's OS pid to ``path``, then stay busy until killed."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    end = time.monotonic() + 60
    while time.monotonic() < end:
        time.sleep(0.01)


class Peer:
    """One pool library: how to make a pool, submit a task and wait for it."""

    name: str
    module: str | None = None  # the import that must exist, or None (stdlib)

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def make(self) -> Any:
        raise NotImplementedError

    def submit(self, pool: Any, fn: Callable, *args: Any) -> Any:
        raise NotImplementedError

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.result(timeout)

    def close(self, pool: Any) -> None:
        pool.shutdown(wait=True)

    def terminate(self, pool: Any) -> None:
        """Tear down after a kill: whatever state the pool is in."""
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except TypeError:
            pool.shutdown(wait=False)


class MultiprocessingPool(Peer):
    name = "mp_pool"

    def make(self) -> Any:
        return multiprocessing.get_context("fork").Pool(2)

    def submit(self, pool: Any, fn: Callable, *args: Any) -> Any:
        return pool.apply_async(fn, args)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        try:
            return handle.get(timeout)
        except multiprocessing.TimeoutError:
            raise TimeoutError from None

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()

    def terminate(self, pool: Any) -> None:
        pool.terminate()
        pool.join()


class BilliardPool(MultiprocessingPool):
    name = "billiard"
    module = "billiard"

    def make(self) -> Any:
        import billiard

        return billiard.Pool(2)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        import billiard

        try:
            return handle.get(timeout)
        except billiard.TimeoutError:
            raise TimeoutError from None


class PebblePool(Peer):
    name = "pebble"
    module = "pebble"

    def make(self) -> Any:
        import pebble

        return pebble.ProcessPool(max_workers=2)

    def submit(self, pool: Any, fn: Callable, *args: Any) -> Any:
        return pool.schedule(fn, args)

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()

    def terminate(self, pool: Any) -> None:
        pool.stop()
        pool.join()


class ProcessPoolExecutorPeer(Peer):
    name = "process_pool_executor"

    def make(self) -> Any:
        return concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("fork"))

    def submit(self, pool: Any, fn: Callable, *args: Any) -> Any:
        return pool.submit(fn, *args)


class LokyPeer(ProcessPoolExecutorPeer):
    name = "loky"
    module = "loky"

    def make(self) -> Any:
        import loky

        return loky.ProcessPoolExecutor(2)


PEERS: list[Peer] = [MultiprocessingPool(), BilliardPool(), PebblePool(),
                     ProcessPoolExecutorPeer(), LokyPeer()]


def summarize(samples_ns: list[int], unit: float) -> dict[str, float]:
    from otpy.bench import summarize as otpy_summarize

    return otpy_summarize(samples_ns, unit)


def round_trip_us(peer: Peer, n: int, warmup: int) -> dict:
    """One task at a time: submit a no-op and wait for its result."""
    pool = peer.make()
    try:
        samples = []
        for i in range(warmup + n):
            t = _ns()
            peer.wait(peer.submit(pool, noop, i), 30)
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e3)
    finally:
        peer.close(pool)


def burst_per_s(peer: Peer, tasks: int) -> int:
    """Submit ``tasks`` no-ops, then wait for all: tasks per second."""
    pool = peer.make()
    try:
        peer.wait(peer.submit(pool, noop, 0), 30)  # workers up before timing
        t = time.perf_counter()
        handles = [peer.submit(pool, noop, i) for i in range(tasks)]
        for handle in handles:
            peer.wait(handle, 60)
        return int(tasks / (time.perf_counter() - t))
    finally:
        peer.close(pool)


def kill_busy_worker(peer: Peer) -> dict:
    """SIGKILL the worker running a task: how long until its caller learns
    anything (``outcome``), and whether the pool then runs a new task."""
    pool = peer.make()
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as tmp:
        path = os.path.join(tmp, "pid")
        try:
            peer.wait(peer.submit(pool, noop, 0), 30)
            handle = peer.submit(pool, busy_reporting, path)
            os_pid = _await_pid(path)
            t = time.perf_counter()
            os.kill(os_pid, signal.SIGKILL)
            try:
                peer.wait(handle, KILL_WAIT)
                outcome = "completed (impossible)"
            except TimeoutError:
                outcome = f"none within {KILL_WAIT:.0f} s (task lost)"
            except Exception as exc:
                outcome = type(exc).__name__
            elapsed_ms = round((time.perf_counter() - t) * 1000, 1)
            try:
                peer.wait(peer.submit(pool, noop, 1), 10)
                survives = True
            except Exception:
                survives = False
            return {"outcome": outcome, "after_ms": elapsed_ms, "pool_survives": survives}
        finally:
            peer.terminate(pool)


def _await_pid(path: str, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(path) as f:
                text = f.read()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.002)  # a benchmark helper polling a file the worker writes
    raise TimeoutError(f"the busy task never started (no pid in {path})")
