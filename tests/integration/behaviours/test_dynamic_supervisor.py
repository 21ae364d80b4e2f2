"""DynamicSupervisor: children on demand, restarts, parallel shutdown, max_children."""

from __future__ import annotations

import os

import otpy
import pytest
from otpy import ChildSpec, DynamicSupervisor

from helpers import expect, expect_down
from servers import Counter, Recorder, start_stubborn
from test_supervisor import kill, started, stop_sup, terminations


def rec(cid, restart="permanent", shutdown=5.0):
    return Recorder.child_spec(cid, otpy.self(), id=cid, restart=restart, shutdown=shutdown)


def test_start_children_on_demand_and_restart_them():
    sup = DynamicSupervisor.start_link(name="dyn")
    a = DynamicSupervisor.start_child("dyn", rec("a"))
    b = DynamicSupervisor.start_child("dyn", rec("b", restart="temporary"))
    assert started("a") == a and started("b") == b
    assert DynamicSupervisor.which_children(sup) == [otpy.ChildInfo("a", a, "worker"),
                                                     otpy.ChildInfo("b", b, "worker")]
    kill(a)
    new_a = started("a")
    assert new_a != a
    kill(b)  # temporary: gone for good
    assert [c.pid for c in DynamicSupervisor.which_children(sup)] == [new_a]
    assert DynamicSupervisor.count_children(sup) == {"specs": 1, "active": 1,
                                                     "supervisors": 0, "workers": 1}
    stop_sup(sup)


def test_terminate_child_by_pid_and_errors():
    sup = DynamicSupervisor.start_link()
    a = DynamicSupervisor.start_child(sup, rec("a"))
    DynamicSupervisor.terminate_child(sup, a)
    assert DynamicSupervisor.which_children(sup) == []
    with pytest.raises(otpy.ChildNotFound):
        DynamicSupervisor.terminate_child(sup, a)
    with pytest.raises(TypeError, match="ChildSpec"):
        DynamicSupervisor.start_child(sup, "nope")
    stop_sup(sup)


def test_max_children_is_a_clear_error():
    sup = DynamicSupervisor.start_link(max_children=2)
    DynamicSupervisor.start_child(sup, Counter.child_spec())
    DynamicSupervisor.start_child(sup, Counter.child_spec())
    with pytest.raises(otpy.MaxChildren, match="max_children=2"):
        DynamicSupervisor.start_child(sup, Counter.child_spec())
    stop_sup(sup)
    with pytest.raises(ValueError, match="max_children"):
        DynamicSupervisor.start_link(max_children=-1)
    with pytest.raises(ValueError, match="max_children"):
        DynamicSupervisor.start_link(max_children=True)


def test_child_spec_checks_its_options_when_made_not_when_started():
    with pytest.raises(ValueError, match="max_children"):
        DynamicSupervisor.child_spec(max_children=-1)
    with pytest.raises(ValueError, match="max_seconds"):
        DynamicSupervisor.child_spec(max_seconds=0)
    with pytest.raises(TypeError, match="no option.*strategy"):
        DynamicSupervisor.child_spec(strategy="one_for_all")


def test_children_stop_in_parallel():
    """Two children that each take their whole shutdown time: the stop takes
    about one timeout, not two; checked by order, not by a clock: both got their
    exit signal before either was killed."""
    sup = DynamicSupervisor.start_link()
    me = otpy.self()
    one = DynamicSupervisor.start_child(sup, ChildSpec("s1", start_stubborn, args=(me,),
                                                       shutdown=0.3))
    two = DynamicSupervisor.start_child(sup, ChildSpec("s2", start_stubborn, args=(me,),
                                                       shutdown=0.3))
    expect(lambda m: m[0] == "stubborn")
    expect(lambda m: m[0] == "stubborn")
    r1, r2 = otpy.monitor(one), otpy.monitor(two)
    stop_sup(sup)
    assert expect_down(r1).reason == "killed" and expect_down(r2).reason == "killed"


def test_parallel_stop_reaches_every_child():
    sup = DynamicSupervisor.start_link()
    for cid in "abc":
        DynamicSupervisor.start_child(sup, rec(cid))
        started(cid)
    stop_sup(sup)
    begun = [m[1] for m in terminations() if m[0] == "terminate_begin"]
    assert sorted(begun) == ["a", "b", "c"]


def test_intensity_exceeded_exits_shutdown():
    sup = DynamicSupervisor.start_link(max_restarts=1, max_seconds=60)
    ref = otpy.monitor(sup)
    a = DynamicSupervisor.start_child(sup, rec("a"))
    assert started("a") == a
    kill(a)
    kill(started("a"))
    assert expect_down(ref).reason == "shutdown"
    expect(lambda m: type(m) is otpy.Exit and m.pid == sup)


def test_dynamic_supervisor_under_a_supervisor():
    top = otpy.Supervisor.start_link([DynamicSupervisor.child_spec(name="pool_sup")])
    DynamicSupervisor.start_child("pool_sup", rec("w"))
    started("w")
    stop_sup(top)
    assert [m[1] for m in terminations() if m[0] == "terminate_begin"] == ["w"]


def _counts_until(sup, wanted, deadline=10.0):
    """count_children once it equals ``wanted`` (each check is a call: no sleep)."""
    import time

    end = time.monotonic() + deadline
    while True:
        counts = DynamicSupervisor.count_children(sup)
        if all(counts[k] == v for k, v in wanted.items()):
            return counts
        assert time.monotonic() < end, f"count_children stayed {counts}, wanted {wanted}"


def test_a_child_whose_restart_failed_still_counts_for_max_children(tmp_path):
    from servers import StartsOnce

    flag = str(tmp_path / "started")
    sup = DynamicSupervisor.start_link(max_children=1, max_restarts=100_000, max_seconds=60)
    child = DynamicSupervisor.start_child(sup, StartsOnce.child_spec(flag, id="once"))
    kill(child)
    # its restarts now fail: it stays in the table, restarting, with no pid
    _counts_until(sup, {"specs": 1, "active": 0})
    assert [c.pid for c in DynamicSupervisor.which_children(sup)] == [None]
    with pytest.raises(otpy.MaxChildren):
        DynamicSupervisor.start_child(sup, StartsOnce.child_spec(flag + "2", id="other"))
    os.unlink(flag)  # the next retry succeeds
    _counts_until(sup, {"specs": 1, "active": 1})
    stop_sup(sup)
