"""Cost per process: what a node pays for each live process stays small.

Timing goals (spawn at 1,000 live processes, orphans after SIGKILL at 5,000)
are figures of ``python -m otpy.bench``; these tests check the mechanisms.
"""

from __future__ import annotations

import os

import psutil

import otpy
from otpy import lowlevel, observer

from helpers import echo, expect, idle, kill_and_wait

MANY = 400  # past 1,024 zygote descriptors (about 3 per process)


def _spawn_idle(n: int) -> list[otpy.Pid]:
    return [otpy.spawn(idle) for _ in range(n)]


def _zygote_rss() -> int:
    return psutil.Process(lowlevel.zygote_os_pid()).memory_info().rss


def test_zygote_memory_per_process_is_kilobytes():
    otpy.self()  # the node is up
    before = _zygote_rss()
    pids = _spawn_idle(200)
    try:
        per_process = (_zygote_rss() - before) / len(pids)
    finally:
        kill_and_wait(pids)
    # it was 256 KiB (a receive buffer per process, touched at creation)
    assert per_process < 32 * 1024, f"{per_process / 1024:.0f} KiB per process"


def test_the_tables_answer_with_descriptors_past_1024():
    # A descriptor number past 1,024 once broke the zygote's liveness check
    # (select() on a pidfd): processes(), is_alive() and send() all failed.
    pids = _spawn_idle(MANY)
    try:
        assert set(pids) <= set(otpy.processes())
        assert otpy.is_alive(pids[-1])
        last = otpy.spawn(echo)
        pids.append(last)
        otpy.send(last, (otpy.self(), "late"))
        assert expect(lambda m: m == ("echo", "late")) == ("echo", "late")
    finally:
        kill_and_wait(pids)


def _descriptors(os_pid: int) -> int:
    return len(os.listdir(f"/proc/{os_pid}/fd"))


def test_a_new_process_holds_none_of_the_others_descriptors():
    first = otpy.spawn(echo)
    crowd = _spawn_idle(100)
    last = otpy.spawn(echo)
    try:
        for pid in (first, last):  # running its body: done with what it inherited
            otpy.send(pid, (otpy.self(), pid))
            expect(lambda m, p=pid: m == ("echo", p))
        # the same few descriptors whatever the number of live processes
        assert _descriptors(last.os_pid) <= _descriptors(first.os_pid) + 2
    finally:
        kill_and_wait([first, last, *crowd])


def _rows(tree: list[dict]) -> list[dict]:
    rows = []
    for row in tree:
        rows.append(row)
        rows.extend(_rows(row["children"]))
    return rows


def test_the_observer_shows_what_a_process_holds_alone():
    pids = _spawn_idle(20)
    try:
        rows = {r["pid"]: r for r in _rows(observer.snapshot()["tree"])}
        for pid in pids:
            row = rows[pid.serial]
            # RSS counts the pages every process shares with the zygote; USS
            # and PSS do not (or only their share)
            assert 0 < row["memory_unique"] <= row["memory_proportional"] < row["memory"]
            assert row["memory_unique"] < row["memory"] / 2
    finally:
        kill_and_wait(pids)
