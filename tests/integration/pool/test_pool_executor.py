"""pool.executor() (otpy_pool._pool_executor): functions on the workers, a death
fails only its future. (Moved from test_pool.py.)"""

from __future__ import annotations

import os
import signal

import pytest
from otpy_pool import WorkerCrashed

from helpers import DEADLINE
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def _kill_own_process():
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_executor_runs_functions_on_the_workers_and_a_death_fails_only_its_future():
    pool = start(size=2)
    executor = pool.executor()
    assert list(executor.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
    worker_os_pids = {p.os_pid for p in pool.workers()}
    assert executor.submit(os.getpid).result(DEADLINE) in worker_os_pids
    assert executor.submit(lambda x: x * 2, 21).result(DEADLINE) == 42  # dill carries lambdas
    doomed = executor.submit(_kill_own_process)
    with pytest.raises(WorkerCrashed) as info:
        doomed.result(DEADLINE)
    assert info.value.reason == "killed"
    assert executor.submit(abs, -5).result(DEADLINE) == 5  # the executor carries on
    with pytest.raises(ZeroDivisionError):
        executor.submit(divmod, 1, 0).result(DEADLINE)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)
    with pytest.raises(ValueError, match="max_workers"):
        pool.executor(max_workers=0)
    pool.stop()


class InterruptsItsPickling:
    """Ctrl-C while submit pickles it (the first time)."""

    pickled = 0

    def __reduce__(self):
        InterruptsItsPickling.pickled += 1
        if InterruptsItsPickling.pickled == 1:
            raise KeyboardInterrupt
        return (str, ("pickled",))


def test_a_submit_interrupted_while_it_sends_raises_and_its_task_never_runs():
    pool = start(size=1)
    ex = pool.executor()
    try:
        assert ex.submit(abs, -1).result(DEADLINE) == 1  # a worker free to claim
        commands = pool.status().total_commands
        with pytest.raises(KeyboardInterrupt):
            ex.submit(str, InterruptsItsPickling())
        assert ex.submit(abs, -2).result(DEADLINE) == 2
    finally:
        ex.shutdown(wait=True)
    assert pool.status().total_commands == commands + 1  # the interrupted one never ran
    pool.stop()
