"""Supervisor, in the manner of OTP's supervisor_SUITE. Every kill is real."""

from __future__ import annotations

import os
import signal

import otpy
import pytest
from otpy import ChildSpec, Supervisor

from helpers import expect, expect_down, exit_with, report_to, others
from servers import (Counter, Recorder, start_ignored, start_stubborn, start_unlinker,
                     returns_garbage)


def rec(cid, restart="permanent", shutdown=5.0, fail=False):
    return Recorder.child_spec(cid, otpy.self(), fail=fail, id=cid, restart=restart,
                               shutdown=shutdown)


def started(cid):
    return expect(lambda m: type(m) is tuple and m[:2] == ("started", cid))[2]


def start_sup(specs, **opts):
    sup = Supervisor.start_link(specs, **opts)
    pids = {spec.id: started(spec.id) for spec in specs}
    return sup, pids


def kill(pid):
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)


def pids_of(sup):
    return {c.id: c.pid for c in Supervisor.which_children(sup)}


def stop_sup(sup):
    ref = otpy.monitor(sup)
    Supervisor.stop(sup)
    expect_down(ref)


def terminations():
    """The terminate_begin/end messages queued so far, in order."""
    out = []
    while True:
        try:
            out.append(otpy.receive(timeout=0, match=lambda m: type(m) is tuple
                                    and m[0] in ("terminate_begin", "terminate_end")))
        except otpy.Timeout:
            return out


# ---- start and stop order ------------------------------------------------------------

def test_children_start_in_order_each_before_the_next():
    sup = Supervisor.start_link([rec("a"), rec("b"), rec("c")])
    order = [expect(lambda m: m[0] == "started")[1] for _ in range(3)]
    assert order == ["a", "b", "c"]
    assert [c.id for c in Supervisor.which_children(sup)] == ["a", "b", "c"]
    stop_sup(sup)


def test_children_stop_in_reverse_order_one_at_a_time():
    sup, _ = start_sup([rec("a"), rec("b"), rec("c")])
    stop_sup(sup)
    assert [m[:2] for m in terminations()] == [
        ("terminate_begin", "c"), ("terminate_end", "c"),
        ("terminate_begin", "b"), ("terminate_end", "b"),
        ("terminate_begin", "a"), ("terminate_end", "a"),
    ]


def test_a_failing_start_stops_the_started_ones_in_reverse_and_names_the_child():
    with pytest.raises(otpy.StartError) as info:
        Supervisor.start_link([rec("a"), rec("b"), rec("bad", fail=True), rec("never")])
    assert "'bad'" in str(info.value) and "refuses to start" in str(info.value)
    assert [m[:2] for m in terminations()] == [
        ("terminate_begin", "b"), ("terminate_end", "b"),
        ("terminate_begin", "a"), ("terminate_end", "a"),
    ]
    assert others() == []


def test_ignored_child_has_no_pid_and_garbage_from_start_is_an_error():
    sup = Supervisor.start_link([ChildSpec("ignored", start_ignored)])
    assert Supervisor.which_children(sup) == [otpy.ChildInfo("ignored", None, "worker")]
    stop_sup(sup)
    with pytest.raises(otpy.StartError, match="expected a Pid"):
        Supervisor.start_link([ChildSpec("garbage", returns_garbage)])


# ---- strategies x restart types ----------------------------------------------------------

@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
def test_one_for_one(restart):
    sup, pids = start_sup([rec("a"), rec("b", restart=restart), rec("c")])
    kill(pids["b"])  # an abnormal exit ("killed")
    now = pids_of(sup)
    assert now["a"] == pids["a"] and now["c"] == pids["c"]
    if restart == "temporary":
        assert "b" not in now
    else:
        assert now["b"] not in (None, pids["b"]) and started("b") == now["b"]
    stop_sup(sup)


@pytest.mark.parametrize("reason, restarted", [
    ("normal", False), ("shutdown", False), (("shutdown", "done"), False), ("crash", True)])
def test_transient_is_restarted_only_after_an_abnormal_exit(reason, restarted):
    sup, pids = start_sup([rec("t", restart="transient")])
    ref = otpy.monitor(pids["t"])
    otpy.call(pids["t"], "x")  # alive and serving
    otpy.exit(pids["t"], "kill") if reason == "crash" else otpy.stop(pids["t"], reason)
    expect_down(ref)
    now = pids_of(sup)["t"]
    assert (now is not None) == restarted
    stop_sup(sup)


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
def test_one_for_all(restart):
    sup, pids = start_sup([rec("a"), rec("b", restart=restart), rec("c")],
                          strategy="one_for_all")
    terminations()
    kill(pids["a"])
    now = pids_of(sup)
    # the others were stopped in reverse order, then everyone started in order
    assert [m[:2] for m in terminations()] == [
        ("terminate_begin", "c"), ("terminate_end", "c"),
        ("terminate_begin", "b"), ("terminate_end", "b")]
    if restart == "temporary":
        assert list(now) == ["a", "c"]
    else:
        assert list(now) == ["a", "b", "c"]
    assert all(now[k] != pids[k] for k in now)
    assert [expect(lambda m: m[0] == "started")[1] for _ in now] == list(now)
    stop_sup(sup)


def test_rest_for_one():
    sup, pids = start_sup([rec("a"), rec("b"), rec("c"), rec("d")], strategy="rest_for_one")
    terminations()
    kill(pids["b"])
    now = pids_of(sup)
    assert now["a"] == pids["a"]
    assert all(now[k] != pids[k] for k in "bcd")
    assert [m[:2] for m in terminations()] == [
        ("terminate_begin", "d"), ("terminate_end", "d"),
        ("terminate_begin", "c"), ("terminate_end", "c")]
    assert [expect(lambda m: m[0] == "started")[1] for _ in range(3)] == ["b", "c", "d"]
    stop_sup(sup)


# ---- intensity and escalation ------------------------------------------------------------

def test_exceeding_intensity_stops_children_in_reverse_and_exits_shutdown():
    sup, pids = start_sup([rec("a"), rec("b")], max_restarts=2, max_seconds=60)
    ref = otpy.monitor(sup)
    for _ in range(2):
        kill(pids_of(sup)["b"])
        started("b")
    terminations()
    kill(pids_of(sup)["b"])  # the third restart within the window: too many
    assert expect_down(ref).reason == "shutdown"
    assert [m[:2] for m in terminations()] == [("terminate_begin", "a"), ("terminate_end", "a")]
    assert others() == []
    expect(lambda m: type(m) is otpy.Exit and m.pid == sup)


def test_a_group_restart_counts_once():
    sup, pids = start_sup([rec("a"), rec("b"), rec("c")], strategy="one_for_all",
                          max_restarts=1, max_seconds=60)
    ref = otpy.monitor(sup)
    kill(pids["a"])  # restarts three children: one restart
    assert set(pids_of(sup)) == {"a", "b", "c"} and otpy.is_alive(sup)
    kill(pids_of(sup)["b"])  # the second restart: over max_restarts=1
    assert expect_down(ref).reason == "shutdown"
    expect(lambda m: type(m) is otpy.Exit and m.pid == sup)


def test_max_restarts_zero_gives_up_at_the_first_crash():
    sup, pids = start_sup([rec("a")], max_restarts=0)
    ref = otpy.monitor(sup)
    kill(pids["a"])
    assert expect_down(ref).reason == "shutdown"
    expect(lambda m: type(m) is otpy.Exit and m.pid == sup)


def test_escalation_through_two_levels():
    inner = Supervisor.child_spec([rec("worker")], id="inner", max_restarts=0)
    middle = Supervisor.child_spec([inner], id="middle", max_restarts=0)
    top = Supervisor.start_link([middle], max_restarts=0)
    worker = started("worker")
    ref = otpy.monitor(top)
    kill(worker)  # inner gives up -> middle gives up -> top gives up
    assert expect_down(ref).reason == "shutdown"
    assert others() == []
    expect(lambda m: type(m) is otpy.Exit and m.pid == top)


def test_a_restarted_child_supervisor_starts_fresh_from_its_specs():
    inner = Supervisor.child_spec([rec("w1")], id="inner", name="inner_sup")
    top = Supervisor.start_link([inner])
    started("w1")
    Supervisor.start_child("inner_sup", rec("added"))
    started("added")
    inner_pid = otpy.whereis("inner_sup")
    kill(inner_pid)  # its child is linked to it and dies too ("killed" propagates)
    Supervisor.which_children(top)  # handled after top restarted inner
    assert otpy.whereis("inner_sup") != inner_pid
    assert [c.id for c in Supervisor.which_children("inner_sup")] == ["w1"]
    started("w1")
    stop_sup(top)


# ---- shutdown ------------------------------------------------------------------------------

def test_a_child_that_traps_and_ignores_shutdown_is_killed_after_its_timeout():
    sup = Supervisor.start_link([ChildSpec("stubborn", start_stubborn, args=(otpy.self(),),
                                           shutdown=0.2)])
    child = expect(lambda m: m[0] == "stubborn")[1]
    ref = otpy.monitor(child)
    stop_sup(sup)
    assert expect_down(ref).reason == "killed"


def test_brutal_kill_kills_at_once():
    sup, pids = start_sup([rec("a", shutdown="brutal_kill")])
    ref = otpy.monitor(pids["a"])
    stop_sup(sup)
    assert expect_down(ref).reason == "killed"
    assert terminations() == []  # no terminate: killed


def test_a_child_that_unlinked_itself_does_not_hang_the_supervisor():
    sup = Supervisor.start_link([ChildSpec("loner", start_unlinker, args=(otpy.self(),),
                                           shutdown=0.5)])
    child = expect(lambda m: m[0] == "unlinked")[1]
    ref = otpy.monitor(child)
    stop_sup(sup)
    assert expect_down(ref).reason == "shutdown"


def test_stop_with_a_reason_and_exit_from_the_parent():
    sup, pids = start_sup([rec("a")])
    ref = otpy.monitor(sup)
    Supervisor.stop(sup, ("shutdown", "maintenance"))
    assert expect_down(ref).reason == ("shutdown", "maintenance")
    assert terminations()[0] == ("terminate_begin", "a", "shutdown")
    sup, pids = start_sup([rec("a")])
    ref = otpy.monitor(sup)
    otpy.exit(sup, "shutdown")  # we are its parent: it stops its children first
    assert expect_down(ref).reason == "shutdown"
    assert terminations()[0][:2] == ("terminate_begin", "a")


# ---- names across restarts -------------------------------------------------------------------

def test_names_are_freed_and_retaken_across_restarts():
    sup = Supervisor.start_link([Counter.child_spec(7, name="named_counter")],
                                max_restarts=1000, max_seconds=60)
    for i in range(30):
        pid = otpy.whereis("named_counter")
        assert otpy.call("named_counter", ("add", 1)) == 8
        kill(pid)
        Supervisor.which_children(sup)  # handled after the restart (one FIFO per process)
        assert otpy.whereis("named_counter") not in (None, pid), i
    stop_sup(sup)


# ---- operations ---------------------------------------------------------------------------------

def test_child_operations_and_their_errors():
    sup, pids = start_sup([rec("a"), rec("b", restart="temporary")])
    assert Supervisor.count_children(sup) == {"specs": 2, "active": 2, "supervisors": 0,
                                              "workers": 2}
    Supervisor.terminate_child(sup, "a")
    assert pids_of(sup) == {"a": None, "b": pids["b"]}
    with pytest.raises(otpy.ChildRunning):
        Supervisor.delete_child(sup, "b")
    with pytest.raises(otpy.ChildRunning):
        Supervisor.restart_child(sup, "b")
    new_a = Supervisor.restart_child(sup, "a")
    assert started("a") == new_a
    Supervisor.terminate_child(sup, "b")  # temporary: its spec goes too
    assert list(pids_of(sup)) == ["a"]
    with pytest.raises(otpy.ChildNotFound):
        Supervisor.terminate_child(sup, "b")
    with pytest.raises(otpy.AlreadyPresent):
        Supervisor.start_child(sup, rec("a"))
    c = Supervisor.start_child(sup, rec("c"))
    assert started("c") == c and list(pids_of(sup)) == ["a", "c"]
    Supervisor.terminate_child(sup, "c")
    Supervisor.delete_child(sup, "c")
    with pytest.raises(otpy.ChildNotFound):
        Supervisor.restart_child(sup, "c")
    with pytest.raises(otpy.StartError, match="refuses"):
        Supervisor.start_child(sup, rec("d", fail=True))
    assert issubclass(otpy.ChildNotFound, otpy.SupervisorError)
    stop_sup(sup)


def test_malformed_specs_and_options_are_named():
    with pytest.raises(TypeError, match="start must be callable"):
        ChildSpec("x", 42)
    with pytest.raises(ValueError, match="restart must be one of"):
        ChildSpec("x", start_ignored, restart="sometimes")
    with pytest.raises(ValueError, match="shutdown must be"):
        ChildSpec("x", start_ignored, shutdown=-1)
    with pytest.raises(ValueError, match="type must be"):
        ChildSpec("x", start_ignored, type="manager")
    with pytest.raises(TypeError, match="hashable"):
        ChildSpec(["x"], start_ignored)
    for args in ("abc", None, start_ignored):  # a str was split into its letters
        with pytest.raises(TypeError, match="child 'x': args must be a tuple or a list"):
            ChildSpec("x", start_ignored, args=args)
    assert ChildSpec("x", start_ignored, args=[1, 2]).args == (1, 2)
    with pytest.raises(TypeError, match=r"not one: \[ChildSpec\(id='x'"):
        Supervisor.start_link(ChildSpec("x", start_ignored))
    with pytest.raises(TypeError, match="list of ChildSpec, not 42"):
        Supervisor.start_link(42)
    with pytest.raises(ValueError, match="duplicate child id 'x'"):
        Supervisor.start_link([ChildSpec("x", start_ignored), ChildSpec("x", start_ignored)])
    with pytest.raises(ValueError, match="strategy"):
        Supervisor.start_link([], strategy="one_for_some")
    with pytest.raises(TypeError, match="ChildSpec"):
        Supervisor.start_link(["not a spec"])
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor.start_link([], max_restarts=-1)
    assert ChildSpec("s", start_ignored, type="supervisor").shutdown == "infinity"
    sup = Supervisor.start_link(spec for spec in [ChildSpec("g", start_ignored)])
    assert [c.id for c in Supervisor.which_children(sup)] == ["g"]  # a generator, read once
    stop_sup(sup)
    assert ChildSpec("w", start_ignored).shutdown == 5.0


def test_plain_spawn_link_children_are_supervised_too():
    me = otpy.self()
    sup = Supervisor.start_link([
        ChildSpec("raw", otpy.spawn_link, args=(report_to, me)),
        ChildSpec("once", otpy.spawn_link, args=(exit_with, "normal"), restart="transient"),
    ])
    first = expect(lambda m: m[0] == "up")[1]
    kill(first)  # permanent: restarted
    second = expect(lambda m: m[0] == "up")[1]
    assert pids_of(sup)["raw"] == second != first
    once = pids_of(sup)["once"]
    if once is not None:
        expect_down(otpy.monitor(once))  # noproc at once if it is already gone
    assert pids_of(sup)["once"] is None  # transient, exited normally: not restarted
    stop_sup(sup)
