"""Links, exit signals and monitors: DESIGN.md section 3, bullet by bullet."""

from __future__ import annotations

import otpy
import pytest

from helpers import (DEADLINE, busy, crash, expect, expect_down, expect_exit, exit_with, idle,
                     kill_and_wait, report_to)


def start_reporter(trap: bool = False) -> otpy.Pid:
    """A process linked to nothing that reports "up" and forwards messages to us."""
    pid = otpy.spawn(report_to, otpy.self(), trap=trap)
    expect(lambda m: m == ("up", pid))
    return pid


def linked_pair(partner_traps: bool):
    """partner <-link-> victim, both monitored by us."""
    me = otpy.self()
    partner = start_reporter(trap=partner_traps)

    def victim_body():
        otpy.link(partner)
        otpy.send(me, "linked")
        otpy.receive()  # waits for a reason to exit

    victim = otpy.spawn(victim_body)
    expect(lambda m: m == "linked")
    return partner, otpy.monitor(partner), victim, otpy.monitor(victim)


# ---- link propagation -----------------------------------------------------------

@pytest.mark.parametrize("reason", ["shutdown", ("shutdown", "maintenance"), {"custom": [1, 2]}])
def test_a_non_trapping_partner_dies_with_the_same_abnormal_reason(reason):
    partner, pref, victim, vref = linked_pair(partner_traps=False)
    otpy.exit(victim, reason)
    assert expect_down(vref).reason == reason
    assert expect_down(pref).reason == reason


def test_normal_exit_does_not_kill_a_non_trapping_partner():
    partner, pref, victim, vref = linked_pair(partner_traps=False)
    otpy.send(victim, "go")  # the victim's body returns: reason "normal"
    assert expect_down(vref).reason == "normal"
    assert otpy.is_alive(partner)
    with pytest.raises(otpy.Timeout):
        expect_down(pref, timeout=0.1)
    kill_and_wait([partner])


def test_a_busy_non_trapping_partner_is_killed_too():
    me = otpy.self()
    victim = otpy.spawn(idle)

    def spin():
        otpy.link(victim)
        otpy.send(me, "spinning")
        busy()

    spinner, sref = otpy.spawn_monitor(spin)
    expect(lambda m: m == "spinning")
    otpy.exit(victim, "shutdown")
    assert expect_down(sref).reason == "shutdown"


def test_a_trapping_partner_gets_exit_messages_including_normal():
    partner, pref, victim, vref = linked_pair(partner_traps=True)
    otpy.send(victim, "go")
    assert expect(lambda m: isinstance(m, otpy.Exit)) == otpy.Exit(victim, "normal")
    assert otpy.is_alive(partner)
    kill_and_wait([partner])


def test_kill_cannot_be_trapped_and_is_seen_as_killed():
    partner, pref, victim, vref = linked_pair(partner_traps=True)
    target = start_reporter(trap=True)
    tref = otpy.monitor(target)
    otpy.exit(target, "kill")
    assert expect_down(tref).reason == "killed"
    otpy.exit(victim, "kill")
    assert expect_down(vref).reason == "killed"
    assert expect(lambda m: isinstance(m, otpy.Exit)) == otpy.Exit(victim, "killed")
    kill_and_wait([partner])


def test_linked_partner_of_a_killed_process_dies_with_killed():
    partner, pref, victim, vref = linked_pair(partner_traps=False)
    otpy.exit(victim, "kill")
    assert expect_down(vref).reason == "killed"
    assert expect_down(pref).reason == "killed"


def test_exit_normal_to_a_non_trapping_other_does_nothing():
    pid = start_reporter()
    ref = otpy.monitor(pid)
    otpy.exit(pid, "normal")
    otpy.send(pid, "still here")
    assert otpy.receive(timeout=DEADLINE) == "still here"
    kill_and_wait([pid])
    assert expect_down(ref).reason == "killed"


def test_exit_normal_to_a_trapping_other_is_a_message():
    pid = start_reporter(trap=True)
    otpy.exit(pid, "normal")
    assert otpy.receive(timeout=DEADLINE) == otpy.Exit(otpy.self(), "normal")
    kill_and_wait([pid])


def test_a_process_sending_normal_to_itself_dies_normal():
    pid, ref = otpy.spawn_monitor(lambda: (otpy.exit(otpy.self(), "normal"), busy()))
    assert expect_down(ref).reason == "normal"


def test_a_trapping_process_sending_an_exit_to_itself_gets_a_message():
    me = otpy.self()

    def body():
        otpy.trap_exit(True)
        otpy.exit(otpy.self(), "selfish")
        otpy.send(me, otpy.receive(timeout=DEADLINE))

    otpy.spawn(body)
    got = otpy.receive(timeout=DEADLINE)
    assert isinstance(got, otpy.Exit) and got.reason == "selfish"


def test_the_program_traps_exits_by_default_and_survives_a_crashed_linked_child():
    child = otpy.spawn_link(crash, "child crashed")
    got = expect_exit(child)
    assert isinstance(got.reason, ValueError) and str(got.reason) == "child crashed"


def test_the_program_told_to_exit_while_not_trapping_raises_processexit():
    previous = otpy.trap_exit(False)
    try:
        with pytest.raises(otpy.ProcessExit) as info:
            otpy.spawn_link(exit_with, "fatal")  # the signal ends the wait for the pid...
            otpy.receive(timeout=DEADLINE)  # ...or, if the pid came first, the next wait
        assert info.value.reason == "fatal"
    finally:
        assert otpy.trap_exit(previous) is False


def test_trap_exit_returns_the_previous_flag():
    me = otpy.self()

    def body():
        first = otpy.trap_exit(True)
        second = otpy.trap_exit(False)
        otpy.send(me, (first, second))

    otpy.spawn(body)
    assert otpy.receive(timeout=DEADLINE) == (False, True)


# ---- ordering -------------------------------------------------------------------

def send_numbers_then_exit(to: otpy.Pid, n: int) -> None:
    for i in range(n):
        otpy.send(to, i)
    raise otpy.ProcessExit("done")


def test_messages_sent_before_death_arrive_before_exit():
    pid = otpy.spawn_link(send_numbers_then_exit, otpy.self(), 500)
    got = [otpy.receive(timeout=DEADLINE) for _ in range(501)]
    assert got == list(range(500)) + [otpy.Exit(pid, "done")]


def test_messages_sent_before_death_arrive_before_down():
    pid, ref = otpy.spawn_monitor(send_numbers_then_exit, otpy.self(), 500)
    got = [otpy.receive(timeout=DEADLINE) for _ in range(501)]
    assert got == list(range(500)) + [otpy.Down(ref, pid, "done")]


def test_messages_before_an_exit_signal_arrive_before_it():
    me = otpy.self()
    target = start_reporter(trap=True)

    def body():
        for i in range(100):
            otpy.send(target, i)
        otpy.exit(target, "after the messages")

    otpy.spawn(body)
    got = [otpy.receive(timeout=DEADLINE) for _ in range(101)]
    assert got[:100] == list(range(100))
    assert isinstance(got[100], otpy.Exit) and got[100].reason == "after the messages"
    assert me is not None
    kill_and_wait([target])


def test_spawn_link_of_a_child_that_dies_at_once_is_still_reported():
    for _ in range(20):
        pid = otpy.spawn_link(exit_with, "instant")
        assert expect_exit(pid).reason == "instant"


def test_spawn_monitor_of_a_child_that_dies_at_once_is_still_reported():
    for _ in range(20):
        pid, ref = otpy.spawn_monitor(exit_with, "instant")
        assert expect_down(ref) == otpy.Down(ref, pid, "instant")


# ---- links: bookkeeping ---------------------------------------------------------

def test_at_most_one_link_per_pair_and_unlink_removes_it():
    me = otpy.self()
    pid = otpy.spawn(idle)
    otpy.link(pid)
    otpy.link(pid)
    assert otpy.process_info(pid)["links"] == [me]
    assert otpy.process_info(me)["links"].count(pid) == 1
    otpy.unlink(pid)
    assert otpy.process_info(pid)["links"] == []
    assert pid not in otpy.process_info(me)["links"]
    kill_and_wait([pid])
    with pytest.raises(otpy.Timeout):
        expect_exit(pid, timeout=0.1)  # unlinked: no Exit


def test_link_to_a_dead_process_from_a_trapping_caller_gives_exit_noproc():
    pid, ref = otpy.spawn_monitor(lambda: None)
    expect_down(ref)
    otpy.link(pid)
    assert expect_exit(pid) == otpy.Exit(pid, "noproc")


def test_link_to_a_dead_process_from_a_non_trapping_caller_raises_noproc():
    me = otpy.self()
    dead, ref = otpy.spawn_monitor(lambda: None)
    expect_down(ref)

    def body():
        try:
            otpy.link(dead)
        except otpy.NoProc as exc:
            otpy.send(me, ("noproc", exc.reason))

    otpy.spawn(body)
    assert otpy.receive(timeout=DEADLINE) == ("noproc", "noproc")


# ---- monitors -------------------------------------------------------------------

def test_one_down_per_monitor():
    pid = otpy.spawn(idle)
    r1, r2 = otpy.monitor(pid), otpy.monitor(pid)
    assert r1 != r2
    otpy.exit(pid, "bye")
    downs = {expect_down(r1).ref, expect_down(r2).ref}
    assert downs == {r1, r2}
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0.1, match=lambda m: isinstance(m, otpy.Down))


def test_monitoring_a_dead_process_or_unknown_name_gives_noproc_at_once():
    pid, ref = otpy.spawn_monitor(lambda: None)
    expect_down(ref)
    r = otpy.monitor(pid)
    assert otpy.receive(timeout=0) == otpy.Down(r, pid, "noproc")
    r = otpy.monitor("no_such_name")
    assert otpy.receive(timeout=0) == otpy.Down(r, "no_such_name", "noproc")


def test_monitor_by_name():
    pid = otpy.spawn(idle)
    otpy.register("watched", pid)
    ref = otpy.monitor("watched")
    otpy.exit(pid, "named exit")
    assert expect_down(ref) == otpy.Down(ref, pid, "named exit")


def test_demonitor_flush_removes_a_queued_down():
    pid = otpy.spawn(idle)
    first, second = otpy.monitor(pid), otpy.monitor(pid)
    otpy.exit(pid, "bye")
    expect_down(second)  # both Downs were sent together; the first is queued now
    assert otpy.demonitor(first, flush=True) is False  # it had already fired
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: isinstance(m, otpy.Down))


def test_demonitor_without_flush_leaves_a_queued_down():
    pid = otpy.spawn(idle)
    first, second = otpy.monitor(pid), otpy.monitor(pid)
    otpy.exit(pid, "bye")
    expect_down(second)
    otpy.demonitor(first)
    assert otpy.receive(timeout=0) == otpy.Down(first, pid, "bye")


def test_demonitor_without_flush_stops_future_downs():
    pid = otpy.spawn(idle)
    ref = otpy.monitor(pid)
    assert otpy.demonitor(ref) is True
    kill_and_wait([pid])
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0.1, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="Pid"):
        otpy.link("not a pid")
    with pytest.raises(TypeError, match="Pid"):
        otpy.exit(42, "normal")
    with pytest.raises(TypeError, match="monitor"):
        otpy.monitor(3.5)
