"""Supervisors count their restarts per child and each time they give up in
the node's tables (lowlevel.tally), under their own label: the counts agree
with the observer's restart column and outlive the supervisor's restart."""

from __future__ import annotations

import os
import signal

import otpy
from helpers import expect_down
from otpy import observer
from servers import Counter


def tallies() -> dict:
    return {tuple(key): n for *key, n in observer.snapshot()["counts"]["tallies"]}


def counted(before: dict, event: str, who: str) -> dict:
    """What was tallied since ``before``: the node is the test program's, shared
    by every test, and its counts only grow."""
    return {detail: n - before.get((ev, label, detail), 0)
            for (ev, label, detail), n in tallies().items()
            if ev == event and label == who and n > before.get((ev, label, detail), 0)}


def kill(pid: otpy.Pid) -> None:
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)


def restarts_shown(snap: dict) -> dict:
    out = {}

    def walk(rows):
        for row in rows:
            if row["child_id"] is not None:
                out[row["child_id"]] = row["restarts"]
            walk(row["children"])

    walk(snap["tree"])
    return out


def test_a_group_restart_counts_each_member_as_the_observer_shows(otpy_tree):
    before = tallies()
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(id="a"), Counter.child_spec(id="b")], id="group",
        name="group", strategy="one_for_all"))
    a = dict((c.id, c.pid) for c in otpy.Supervisor.which_children("group"))["a"]
    kill(a)
    otpy.Supervisor.which_children("group")  # answered after the restart
    assert counted(before, "restart", "group") == {"a": 1, "b": 1}
    shown = restarts_shown(observer.snapshot())
    assert (shown["a"], shown["b"]) == (1, 1)


def test_a_dynamic_supervisors_restarts_are_counted_per_child(otpy_tree):
    before = tallies()
    otpy_tree.start_child(otpy.DynamicSupervisor.child_spec(id="dyn", name="dyn"))
    pid = otpy.DynamicSupervisor.start_child("dyn", Counter.child_spec(id="member"))
    kill(pid)
    (child,) = otpy.DynamicSupervisor.which_children("dyn")
    kill(child.pid)
    otpy.DynamicSupervisor.which_children("dyn")
    assert counted(before, "restart", "dyn") == {"member": 2}


def test_giving_up_is_counted_and_the_counts_outlive_the_supervisor(otpy_tree):
    before = tallies()
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(id="c")], id="inner", name="inner", max_restarts=1))

    def child() -> otpy.Pid:
        return otpy.Supervisor.which_children("inner")[0].pid

    kill(child())
    first = otpy.whereis("inner")
    ref = otpy.monitor(first)
    kill(child())                           # a second restart in the window: it gives up
    assert expect_down(ref).reason == "shutdown"
    otpy.Supervisor.which_children(otpy_tree.supervisor)  # after "inner" was restarted
    assert otpy.whereis("inner") != first
    kill(child())                           # the new "inner" restarts it again
    otpy.Supervisor.which_children("inner")

    assert counted(before, "restart_intensity_reached", "inner") == {None: 1}
    assert counted(before, "restart", "inner") == {"c": 2}  # one per incarnation of "inner"
    assert counted(before, "restart", otpy_tree.name) == {"inner": 1}
    assert restarts_shown(observer.snapshot())["c"] == 1  # the new incarnation's own count
