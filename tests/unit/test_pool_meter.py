"""The pool's metrics table without processes: a page of this process,
written as the server and the workers write it, read as a scrape reads it."""

from __future__ import annotations

import os

import pytest

from otpy_pool import Worker, command
from otpy_pool._pool_meter import (BOUNDS, UNKNOWN, PoolMeter, WorkerMeter, command_names,
                                   page_bytes, read, slot_count)
from otpy_pool._protocol import FUNCTION
from otpy_pool._shared_memory import create


class Two(Worker):
    @command
    def a(self, session):
        pass

    @command(replay=True)
    def b(self, session):
        pass


@pytest.fixture
def meter():
    names = command_names(Two)
    size = page_bytes(len(names), slot_count(1, 0))
    fd, page = create("test-pool-meter", size)
    server = PoolMeter((os.getpid(), fd, size), Two, 1, 0)
    try:
        yield server, names
    finally:
        server.close()
        page.close()
        os.close(fd)


def figures(server: PoolMeter, names) -> dict:
    return read(server.words, names)


def test_the_table_names_the_class_commands_then_the_function_and_unknown():
    assert command_names(Two) == ("a", "b", FUNCTION, UNKNOWN)


def test_commands_are_counted_by_outcome_with_their_durations(meter):
    server, names = meter
    slot = server.claim()
    server.started(slot, 1234)
    worker = WorkerMeter(slot, Two)
    try:
        started = worker.start("a")
        worker.done(started, started[1] + 50_000, True)  # 50 µs: the first bucket
        started = worker.start("a")
        worker.done(started, started[1] + 2_000_000, False)  # 2 ms
        worker.done(worker.start("no such"), worker.start("no such")[1] + 1, True)
        worker.failed("b")  # a lost session's command: an error, no duration
        ok, error, crashed, sum_ns, buckets = figures(server, names)["commands"]["a"]
        assert (ok, error, crashed, sum_ns) == (1, 1, 0, 2_050_000)
        assert buckets[0] == 1 and buckets[BOUNDS.index(0.0025)] == 1 and sum(buckets) == 2
        assert figures(server, names)["commands"][UNKNOWN][0] == 1
        assert figures(server, names)["commands"]["b"][:3] == (0, 1, 0)
    finally:
        worker.close()


def test_a_dead_workers_running_command_is_crashed_and_its_slot_keeps_its_counts(meter):
    server, names = meter
    slot = server.claim()
    server.started(slot, 1234)
    first = WorkerMeter(slot, Two)
    first.done(first.start("a"), 0, True)
    first.start("b")  # running when it dies
    assert figures(server, names)["figures"]["running"] == 1
    server.gone(1234)
    first.close()
    again = server.claim()
    assert again == slot  # reused, counts and all
    server.started(again, 5678)
    second = WorkerMeter(again, Two)
    second.done(second.start("a"), 0, True)
    second.close()
    reading = figures(server, names)
    assert reading["commands"]["a"][0] == 2 and reading["commands"]["b"][2] == 1
    assert reading["figures"]["running"] == 0


def test_slots_run_out_and_a_failed_start_gives_its_slot_back(meter):
    server, _ = meter
    slots = [server.claim() for _ in range(slot_count(1, 0))]
    assert None not in slots and server.claim() is None
    server.started(slots[0], None)
    assert server.claim() == slots[0]


def test_a_new_server_keeps_its_adopted_workers_slots_and_counters(meter):
    server, names = meter
    for os_pid in (11, 22):
        server.started(server.claim(), os_pid)
    server.publish([1, 0, 2, 0, 0, 0, 0, 0, 0], {"worker_restarts": 3, "timeouts": 1,
                                                  "sessions_recovered": 0, "sessions_lost": 0})
    successor = PoolMeter(server.ref, Two, 1, 0)
    try:
        successor.adopt([22])  # 11 is gone
        assert successor.owners == {22: 1}
        successor.publish([1, 0, 1, 0, 0, 0, 0, 0, 0], {"worker_restarts": 1, "timeouts": 0,
                                                         "sessions_recovered": 0,
                                                         "sessions_lost": 0})
        f = figures(successor, names)["figures"]
        assert (f["worker_restarts"], f["timeouts"], f["worker_starts"], f["idle"]) == \
            (4, 1, 2, 1)
    finally:
        successor.close()


def test_a_page_of_another_layout_is_refused(meter):
    server, names = meter
    with pytest.raises(ValueError, match="layout"):
        read(server.words, names[:-1])


class FakeView:
    """What the pool source reads of a NodeView: rows, and memfds by name."""

    def __init__(self, rows, fds):
        self.rows = rows
        self.fds = fds

    def open_memfd(self, os_pid, name):
        if name not in self.fds:
            raise FileNotFoundError(name)
        return os.dup(self.fds[name])


def test_a_pool_whose_page_cannot_be_read_is_left_out_and_the_others_go_out(meter):
    from otpy_pool._metrics import PoolSource
    from otpy_pool._pool_meter import memfd_name

    server, names = meter
    server.publish([1, 0, 1, 0, 0, 0, 0, 0, 0], {"worker_restarts": 0, "timeouts": 0,
                                                  "sessions_recovered": 0, "sessions_lost": 0})
    bad_fd, bad = create("bad", 4096)  # zeros: not a page of this layout
    try:
        commands = ",".join(names)
        rows = [{"meta": {"otpy_pool": p, "otpy_pool_page": os.getpid(),
                          "otpy_pool_commands": commands}} for p in ("bad", "gone", "good")]
        view = FakeView(rows, {memfd_name("bad"): bad_fd, memfd_name("good"): server.ref[1]})
        samples = PoolSource().collect(view)
        assert [s.labels for s in samples["otpy_pool_size"]] == [("good",)]
    finally:
        bad.close()
        os.close(bad_fd)
