"""The executor while its workers are SIGKILLed: submitting threads, tasks
sent to claimed workers and tasks queued for the runners, results taken by
``result()``, by ``as_completed`` and by nobody. Every future ends, with its
value or with ``BrokenWorker`` (the task its worker was running); no task
runs twice; the executor serves on and shuts down leaving no process."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import threading

import pytest

from otpy_pool import BrokenWorker, ProcessPoolExecutor

from helpers import wait_gone

pytestmark = pytest.mark.layer("full")  # real pool workers

DEADLINE = 30.0  # for anything to happen: a deadline for a broken test, never a pause
THREADS = 4
TASKS = 300  # per thread
KILLS = 12


def mark(path: str, i: int) -> int:
    """In a worker: note that task ``i`` ran (one line, appended atomically)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


def test_every_future_ends_and_no_task_runs_twice_while_workers_are_killed(tmp_path):
    ran = str(tmp_path / "ran")
    ex = ProcessPoolExecutor(2)
    futures: dict[int, concurrent.futures.Future] = {}
    lock = threading.Lock()
    submitted = threading.Semaphore(0)  # one release per task submitted: paces the killer

    def submit_all(first: int) -> None:
        rng = random.Random(first)
        for i in range(first, first + TASKS):
            future = ex.submit(mark, ran, i)
            with lock:
                futures[i] = future
            submitted.release()
            if rng.random() < 0.3:  # some are waited for at once, the rest later or never
                concurrent.futures.wait([future], timeout=DEADLINE)

    def kill_workers() -> None:
        rng = random.Random(7)
        for _ in range(KILLS):
            for _ in range(THREADS * TASKS // (KILLS + 1)):
                assert submitted.acquire(timeout=DEADLINE)
            workers = ex.pool.workers()
            if workers:
                try:
                    os.kill(rng.choice(workers).os_pid, signal.SIGKILL)
                except ProcessLookupError:  # just replaced
                    pass

    try:
        threads = [threading.Thread(target=submit_all, args=(t * TASKS,))
                   for t in range(THREADS)]
        killer = threading.Thread(target=kill_workers)
        for thread in threads + [killer]:
            thread.start()
        for thread in threads + [killer]:
            thread.join(DEADLINE * 4)
            assert not thread.is_alive()
        done, not_done = concurrent.futures.wait(list(futures.values()), timeout=DEADLINE)
        assert not not_done
        values = {}
        for i, future in futures.items():
            error = future.exception(0)
            if error is None:
                values[i] = future.result(0)
            else:
                assert isinstance(error, BrokenWorker), repr(error)
        assert all(values[i] == i for i in values)
        assert len(values) >= len(futures) - KILLS  # a kill fails at most the task it ran
        assert ex.submit(pow, 2, 5).result(DEADLINE) == 32  # it serves on
        assert ex.pool.status().worker_restarts >= KILLS // 2
        workers = [w.os_pid for w in ex.pool.workers()]
    finally:
        ex.shutdown(wait=True)
    assert not wait_gone(workers)
    with open(ran) as lines:
        marks = [int(line) for line in lines]
    assert len(marks) == len(set(marks)), "a task ran twice"
    assert set(values) <= set(marks)
