"""otpy_pool.ProcessPoolExecutor: the standard library's executor on a pool of
its own, and what it does better on purpose (docs/pool.md, "Coming from
concurrent.futures"). CPython's own tests of it: test_executor_cpython.py."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures.process import BrokenProcessPool

import otpy
import psutil
import pytest
from otpy.testing import wait_for
from otpy_pool import (BrokenWorker, InitializerFailed, Pool, PoolNotRunning, PoolUnavailable,
                       ProcessPoolExecutor, TaskNotPicklable, WorkerCrashed)

from helpers import DEADLINE, expect, in_thread, sigkill
from pool_helpers import no_stale_events  # noqa: F401 (a fixture, by name)
from pool_workers import Notes, event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]

STATUS = "uninitialized"  # set in each worker by its initializer


def set_status(value):
    global STATUS
    STATUS = value


def status_and_pid():
    return STATUS, os.getpid()


def refuse():
    raise ValueError("initializer refused")


def hold(parent, tag):
    """In a worker: tell the test it runs, then wait for its go (at most DEADLINE)."""
    otpy.send(parent, ("holding", tag, otpy.self()))
    otpy.receive(timeout=DEADLINE, match=lambda m: m == ("go", tag))
    return tag


def holding(tag) -> otpy.Pid:
    """The worker running ``hold(..., tag)``, once it does."""
    return expect(lambda m: type(m) is tuple and m[:2] == ("holding", tag))[2]


def release(worker: otpy.Pid, tag) -> None:
    otpy.send(worker, ("go", tag))


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


class KillsOnArrival:
    """An argument whose unpickling SIGKILLs the worker receiving it."""

    def __reduce__(self):
        return (sigkill_self, ())


@pytest.fixture
def executor():
    ex = ProcessPoolExecutor(2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_it_runs_functions_on_workers_of_its_own_each_initialized_as_it_starts():
    fork = multiprocessing.get_context("fork")  # accepted, and ignored
    with ProcessPoolExecutor(2, mp_context=fork, initializer=set_status,
                             initargs=("ready",)) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        workers = {p.os_pid for p in ex.pool.workers()}
        assert len(workers) == 2 and os.getpid() not in workers
        outcomes = [f.result(DEADLINE) for f in [ex.submit(status_and_pid) for _ in range(8)]]
        assert {status for status, _ in outcomes} == {"ready"}
        assert {pid for _, pid in outcomes} <= workers
        assert ex.submit(pow, 2, exp=5).result(DEADLINE) == 32  # keyword arguments
        assert list(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
    with pytest.raises(PoolNotRunning):  # shutdown stopped its pool
        ex.pool.status()


def test_max_workers_defaults_to_the_cpus_and_bad_arguments_are_named():
    with ProcessPoolExecutor() as ex:
        assert len(ex.pool.workers()) == os.cpu_count()
        for chunksize in (0, -1):
            with pytest.raises(ValueError, match="chunksize"):
                ex.map(abs, [1], chunksize=chunksize)
        with pytest.raises(TypeError, match="chunksize"):
            ex.map(abs, [1], chunksize="2")
        with pytest.raises(TypeError, match="callable"):
            ex.submit(42)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="^max_workers must be greater than 0$"):
            ProcessPoolExecutor(bad)
    with pytest.raises(TypeError, match="max_workers"):
        ProcessPoolExecutor("2")
    with pytest.raises(TypeError, match="initializer"):
        ProcessPoolExecutor(1, initializer="set_status")
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        ProcessPoolExecutor(1, max_tasks_per_child=0)


def test_a_failing_initializer_breaks_the_executor_at_construction(caplog):
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        ex = ProcessPoolExecutor(2, initializer=refuse)
    assert "initializer refused" in caplog.text  # with the worker's traceback
    with pytest.raises(InitializerFailed) as info:
        ex.submit(abs, -1)
    error = info.value
    assert isinstance(error, BrokenProcessPool) and isinstance(error, PoolUnavailable)
    assert isinstance(error.cause, ValueError) and "initializer refused" in str(error)
    assert ex._broken  # as the standard library's says it
    ex.shutdown()
    with pytest.raises(InitializerFailed):  # broken first, shut down second
        ex.submit(abs, -1)


def test_max_tasks_per_child_retires_a_worker_after_that_many_tasks():
    with ProcessPoolExecutor(1, max_tasks_per_child=3) as ex:
        ex.pool.subscribe()
        pids = [ex.submit(os.getpid).result(DEADLINE) for _ in range(7)]
        exits = [event("worker_exited").detail for _ in range(2)]
        ex.pool.unsubscribe()
    assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1
    assert len({pids[0], pids[3], pids[6]}) == 3
    assert all("retired" in detail for detail in exits), exits  # left, never killed


def test_a_sigkilled_worker_fails_only_its_own_task_and_the_executor_serves_on(executor):
    me = otpy.self()
    doomed = executor.submit(hold, me, "a")
    worker = holding("a")
    survivor = executor.submit(hold, me, "b")
    other = holding("b")
    queued = [executor.submit(abs, -i) for i in range(20)]  # behind two busy workers
    sigkill(worker)
    error = doomed.exception(DEADLINE)
    assert isinstance(error, BrokenWorker) and error.reason == "killed"
    assert isinstance(error, WorkerCrashed) and isinstance(error, BrokenProcessPool)
    release(other, "b")
    assert survivor.result(DEADLINE) == "b"
    assert [f.result(DEADLINE) for f in queued] == list(range(20))
    assert executor.submit(pow, 2, 3).result(DEADLINE) == 8
    assert not executor._broken


def test_a_task_is_one_round_trip_the_pools_server_not_asked(executor):
    """submit sends a task to a free worker it claims, and result() takes its
    reply in the calling thread: with the pool's server SIGSTOPped, tasks
    still run, one after the other."""
    executor.submit(abs, 0).result(DEADLINE)  # (this process asks where the claims are, once)
    server = otpy.whereis(executor.pool.name)
    os.kill(server.os_pid, signal.SIGSTOP)
    try:
        results = [executor.submit(abs, -i).result(DEADLINE) for i in range(20)]
    finally:
        os.kill(server.os_pid, signal.SIGCONT)
    assert results == list(range(20))


def test_a_task_nobody_asks_about_does_not_keep_its_worker():
    """A task holds its claimed worker until its reply is taken: with nobody
    asking, the executor's loop takes it, so the work queued behind it runs."""
    with ProcessPoolExecutor(1) as ex:
        ex.submit(abs, 0).result(DEADLINE)
        first = ex.submit(abs, -1)  # claims the only worker; nobody asks for it
        second = ex.submit(abs, -2)  # to the executor's runners: waits for that worker
        assert second.result(DEADLINE) == 2
        assert first.result(DEADLINE) == 1


def test_callbacks_wait_and_as_completed_see_tasks_whose_result_nobody_asks_for(executor):
    called = threading.Event()
    executor.submit(abs, -3).add_done_callback(lambda _: called.set())
    assert called.wait(DEADLINE)
    waited = executor.submit(abs, -4)
    assert concurrent.futures.wait([waited], timeout=DEADLINE).done == {waited}
    completed = executor.submit(abs, -5)
    assert list(concurrent.futures.as_completed([completed], timeout=DEADLINE)) == [completed]
    assert (waited.result(0), completed.result(0)) == (4, 5)


def test_a_result_that_times_out_leaves_the_task_running_to_be_asked_again(executor):
    me = otpy.self()
    task = executor.submit(hold, me, "t")
    worker = holding("t")
    with pytest.raises(concurrent.futures.TimeoutError):
        task.result(timeout=0.01)
    assert task.running() and not task.cancel()
    release(worker, "t")
    assert task.result(DEADLINE) == "t"


def test_a_cancelled_task_is_seen_done_by_wait_and_as_completed():
    """A queued task cancelled by its caller: wait() and as_completed() are
    told once a runner reaches it (as the standard library's executors do)."""
    me = otpy.self()
    with ProcessPoolExecutor(1) as ex:
        first = ex.submit(hold, me, "c")
        worker = holding("c")
        second = ex.submit(abs, -2)  # a runner takes it and waits for the worker
        cancelled = ex.submit(abs, -3)
        assert cancelled.cancel()
        release(worker, "c")
        assert concurrent.futures.wait([cancelled], timeout=DEADLINE).done == {cancelled}
        assert list(concurrent.futures.as_completed([cancelled], timeout=DEADLINE)) == \
            [cancelled]
        assert (first.result(DEADLINE), second.result(DEADLINE)) == ("c", 2)


class SlowToPickle:
    """An argument whose pickling waits for the test's go (in the submitting thread)."""

    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def __reduce__(self):
        assert self.go.wait(DEADLINE)
        return (str, ("pickled",))


def test_a_submit_busy_sending_holds_up_no_other_thread(executor):
    """submit claims and sends outside the executor's lock: while one
    thread's submit is busy pickling its argument, another thread's task
    is submitted and its result taken."""
    go = threading.Event()
    slow = in_thread(lambda: executor.submit(str, SlowToPickle(go)).result(DEADLINE))
    try:
        assert executor.submit(abs, -7).result(DEADLINE) == 7
    finally:
        go.set()
    assert slow() == "pickled"


def test_a_worker_killed_with_a_pipelined_task_queued_runs_that_task_elsewhere():
    """While "a" holds the only worker, three tasks queue for the runner; its
    worker, SIGKILLed while running "b", never started the others (sent
    with it or still queued): they run on the replacement."""
    me = otpy.self()
    with ProcessPoolExecutor(1) as ex:
        first = ex.submit(hold, me, "a")
        worker = holding("a")
        running = ex.submit(hold, me, "b")
        behind = [ex.submit(os.getpid), ex.submit(os.getpid)]
        release(worker, "a")
        assert first.result(DEADLINE) == "a"
        assert holding("b") == worker
        sigkill(worker)
        assert isinstance(running.exception(DEADLINE), BrokenWorker)
        pids = {f.result(DEADLINE) for f in behind}
        assert len(pids) == 1 and worker.os_pid not in pids


def test_a_task_that_kills_every_worker_it_reaches_fails_after_a_few(executor):
    """Its input kills each worker as it arrives, before the task starts: it
    is retried on other workers, a bounded number of times."""
    doomed = executor.submit(id, KillsOnArrival())
    error = doomed.exception(DEADLINE * 3)
    assert isinstance(error, BrokenWorker) and "died before they could start" in str(error)
    assert executor.submit(abs, -3).result(DEADLINE) == 3


def test_an_argument_that_cannot_be_pickled_is_a_pickling_error(executor):
    failed = executor.submit(list, (i for i in range(3)))  # a generator: neither pickle nor dill
    error = failed.exception(DEADLINE)
    assert isinstance(error, TaskNotPicklable) and isinstance(error, pickle.PicklingError)
    assert isinstance(error, otpy.SerializationError) and "generator" in str(error)
    assert executor.submit(abs, -2).result(DEADLINE) == 2


def test_a_function_calling_sys_exit_fails_its_task_and_its_worker_lives(executor):
    pids = {p.os_pid for p in executor.pool.workers()}
    failed = executor.submit(sys.exit, 3)
    error = failed.exception(DEADLINE)
    assert type(error) is SystemExit and error.args == (3,)
    assert {p.os_pid for p in executor.pool.workers()} == pids


def test_thousands_of_pending_futures_cost_no_thread():
    me = otpy.self()
    before = threading.active_count()
    with ProcessPoolExecutor(2) as ex:
        held = [ex.submit(hold, me, tag) for tag in ("a", "b")]
        workers = [holding(tag) for tag in ("a", "b")]
        assert threading.active_count() <= before + 1  # the executor's own loop thread
        running = threading.active_count()
        pending = [ex.submit(abs, -i) for i in range(3000)]
        assert threading.active_count() == running
        assert not any(f.done() for f in pending)
        for worker, tag in zip(workers, ("a", "b")):
            release(worker, tag)
        assert [f.result(DEADLINE) for f in held] == ["a", "b"]
        assert [f.result(DEADLINE) for f in pending] == list(range(3000))
    assert threading.active_count() == before


def test_work_waits_for_a_worker_without_limit_and_a_shared_pool_gets_it_back():
    """Over a pool of one worker whose checkout_timeout is 50 ms: the first
    task claims the worker, and the executor's three runners wait in the
    pool's queue as long as it holds it, never failing with PoolTimeout;
    idle, the executor holds no worker."""
    me = otpy.self()
    pool = Pool.start_link(Notes, size=1, checkout_timeout=0.05)
    ex = pool.executor(max_workers=3)
    try:
        first = ex.submit(hold, me, "a")
        worker = holding("a")
        others = [ex.submit(abs, -i) for i in range(5)]
        wait_for(lambda: pool.status().queued == 3)
        done, _ = concurrent.futures.wait(others, timeout=0.5)  # 10x checkout_timeout
        assert not done
        release(worker, "a")
        assert [f.result(DEADLINE) for f in others] == list(range(5))
        assert first.result(DEADLINE) == "a"
        wait_for(lambda: pool.status().busy == 0)
    finally:
        ex.shutdown()
        pool.stop()


def test_map_sends_chunks_of_chunksize_tasks(executor):
    commands = executor.pool.status().total_commands
    results = list(executor.map(pow, range(100), [2] * 100, chunksize=10))
    assert results == [i ** 2 for i in range(100)]
    assert executor.pool.status().total_commands - commands == 10  # one per chunk
    with pytest.raises(ZeroDivisionError):
        list(executor.map(divmod, [1, 1, 1], [1, 0, 1], chunksize=2))
    # what pickle cannot carry (lambdas as function, arguments, results) dill does
    makers = executor.map(lambda n: (lambda x: x + n), range(5), chunksize=2)
    assert [make(10) for make in makers] == [10, 11, 12, 13, 14]
    assert list(executor.map(lambda f: f(2), [lambda x: x * 3] * 3, chunksize=2)) == [6] * 3


def test_shutdown_cancels_what_no_worker_took_and_refuses_new_work():
    me = otpy.self()
    ex = ProcessPoolExecutor(2)
    try:
        held = [ex.submit(hold, me, tag) for tag in ("a", "b")]
        workers = [holding(tag) for tag in ("a", "b")]
        queued = [ex.submit(abs, -i) for i in range(10)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(abs, 1)
        for worker, tag in zip(workers, ("a", "b")):
            release(worker, tag)
    finally:
        ex.shutdown(wait=True)
    assert [f.result(0) for f in held] == ["a", "b"]  # done before shutdown returned
    with pytest.raises(PoolNotRunning):
        ex.pool.status()


def test_shutdown_cancelling_futures_still_runs_work_a_dead_worker_never_started():
    """Tasks pipelined behind one whose input kills its worker never started:
    they wait, running, while it is retried; a shutdown(cancel_futures=True)
    then cannot cancel them, and they still run."""
    me = otpy.self()
    ex = ProcessPoolExecutor(1)
    try:
        # the one worker claimed by the first task; the second is the runner's,
        # which waits for that worker and then holds it, so that the four below
        # queue up and go to it together
        gate = ex.submit(hold, me, "gate")
        worker = holding("gate")
        second = ex.submit(hold, me, "second")
        wait_for(lambda: ex.pool.status().queued == 1)  # the runner waits in the pool's queue
        doomed = ex.submit(id, KillsOnArrival())
        behind = [ex.submit(os.getpid) for _ in range(3)]
        release(worker, "gate")
        release(holding("second"), "second")
        assert (gate.result(DEADLINE), second.result(DEADLINE)) == ("gate", "second")
        wait_for(lambda: ex.pool.status().worker_restarts >= 1)
        ex.shutdown(wait=False, cancel_futures=True)
        assert isinstance(doomed.exception(DEADLINE * 3), BrokenWorker)
        assert all(isinstance(f.result(DEADLINE), int) for f in behind)
    finally:
        ex.shutdown(wait=True)


def test_at_the_interpreters_exit_pending_work_runs_then_everything_stops(tmp_path):
    """Pending work of an executor left open, and of one shut down without
    waiting, runs before the program ends; then no process is left."""
    marker, other = tmp_path / "ran", tmp_path / "ran too"
    program = textwrap.dedent(f"""
        import atexit

        @atexit.register  # runs after the executor's own hook
        def submit_late():
            try:
                ex.submit(abs, 1)
            except RuntimeError as exc:
                print("late:", exc, flush=True)

        import pathlib
        import time
        import otpy
        from otpy_pool import ProcessPoolExecutor

        if __name__ == "__main__":
            ex = ProcessPoolExecutor(2)
            ex.submit(pathlib.Path({str(marker)!r}).write_text, "ran")
            closed = ProcessPoolExecutor(1)
            for _ in range(6):  # work, not a wait: the next task queues behind it
                closed.submit(time.sleep, 0.1)
            closed.submit(pathlib.Path({str(other)!r}).write_text, "ran too")
            closed.shutdown(wait=False)
            print("node", otpy.self().node, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "ran" and other.read_text() == "ran too"
    assert "late: cannot schedule new futures after interpreter shutdown" in out.stdout
    node = re.search(r"node (\w+)", out.stdout).group(1)
    wait_for(lambda: not [p for p in psutil.process_iter(["name"])
                          if p.info["name"] == f"otpy-{node}"])


def test_ctrl_c_in_result_leaves_the_task_running_for_a_later_result():
    """A KeyboardInterrupt while result() waits is raised there; the task
    runs on, and a later result() gets its value (as the standard library's)."""
    program = textwrap.dedent("""
        import os
        import signal
        import threading

        import otpy
        from otpy_pool import ProcessPoolExecutor


        def hold(parent):
            otpy.send(parent, ("holding", otpy.self()))
            otpy.receive(timeout=30, match=lambda m: m == "go")
            return "done"


        def interrupt(main):  # once the main thread reads, in result()
            from otpy._runtime.node import context  # (the runtime's reader role)

            while not context().reading:
                os.sched_yield()
            signal.pthread_kill(main, signal.SIGINT)


        if __name__ == "__main__":
            me = otpy.self()
            with ProcessPoolExecutor(1) as ex:
                task = ex.submit(hold, me)
                _, worker = otpy.receive(timeout=30, match=lambda m: m[0] == "holding")
                threading.Thread(target=interrupt, args=(threading.get_ident(),),
                                 daemon=True).start()
                try:
                    task.result(timeout=30)
                    print("not interrupted", flush=True)
                except KeyboardInterrupt:
                    print("interrupted; running:", task.running(), flush=True)
                otpy.send(worker, "go")
                print("then:", task.result(timeout=30), task.exception(timeout=0), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["interrupted; running: True", "then: done None"]


CTRL_C_ENDS = textwrap.dedent("""
    import atexit
    import sys


    @atexit.register  # registered first: runs last, once the executor's hook has
    def report():
        print("pending cancelled:", *(f.cancelled() for f in pending), flush=True)


    import otpy
    from otpy_pool import ProcessPoolExecutor


    def forever(parent):
        otpy.send(parent, "running")
        while True:
            otpy.receive()


    if sys.argv[1] == "pool":  # an executor over a pool of the program's
        from otpy_pool import Pool, Worker
        executor = Pool.start_link(Worker, size=2).executor()
    else:
        executor = ProcessPoolExecutor(2)
    tasks = [executor.submit(forever, otpy.self()) for _ in range(2)]
    for _ in tasks:
        otpy.receive(timeout=30, match=lambda m: m == "running")
    pending = [executor.submit(abs, -1) for _ in range(4)]  # no worker free for them
    print(*(w.os_pid for w in executor.pool.workers()), flush=True)
    if sys.argv[1] != "without":
        with executor:
            tasks[0].result()
    else:
        tasks[0].result()
""")


@pytest.mark.parametrize("block", ["with", "without", "pool"])
def test_ctrl_c_that_ends_the_program_ends_its_running_tasks_too(block):
    """As the standard library's, whose workers get the terminal's SIGINT:
    the program ends, it does not wait for a task that never ends (it did,
    in ``__exit__`` and at exit), and its workers end with it (a pool's
    at the node's orderly stop, here bounded to 1 s)."""
    env = {**os.environ, "OTPY_SHUTDOWN_TIMEOUT": "1"}
    program = subprocess.Popen([sys.executable, "-c", CTRL_C_ENDS, block], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        workers = [int(p) for p in program.stdout.readline().split()]
        assert len(workers) == 2, program.stderr.read()
        program.send_signal(signal.SIGINT)
        assert program.wait(timeout=DEADLINE) == -signal.SIGINT
        assert "KeyboardInterrupt" in program.stderr.read()
        assert program.stdout.read().split() == ["pending", "cancelled:"] + ["True"] * 4
        for os_pid in workers:
            wait_for(lambda: not psutil.pid_exists(os_pid), timeout=DEADLINE)
    finally:
        program.kill()
        program.wait()
        program.stdout.close()
        program.stderr.close()


def test_ctrl_c_out_of_a_with_block_of_an_executor_whose_pool_is_gone_stays_a_ctrl_c():
    executor = ProcessPoolExecutor(1)
    executor.pool.stop()
    with pytest.raises(KeyboardInterrupt):
        with executor:
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, 1)


def test_a_ctrl_c_typed_at_the_interpreters_prompt_does_not_drop_work_at_exit(tmp_path):
    # the prompt keeps the last error it printed in sys.last_value
    marker = tmp_path / "ran"
    session = textwrap.dedent(f"""
        import pathlib, time
        from otpy_pool import ProcessPoolExecutor
        def slow_write(path):
            time.sleep(1)  # (the task's work: still running when the session ends)
            pathlib.Path(path).write_text("ran")

        raise KeyboardInterrupt
        executor = ProcessPoolExecutor(1)
        future = executor.submit(slow_write, {str(marker)!r})
    """)
    out = subprocess.run([sys.executable, "-i", "-q"], input=session, capture_output=True,
                         text=True, timeout=60)
    assert "KeyboardInterrupt" in out.stderr
    assert marker.read_text() == "ran", out.stderr
