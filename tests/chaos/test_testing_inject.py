"""inject_failure: each kind is real, healed by .heal(), by duration, and by
the end of the isolated tree it was injected in."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

import otpy
from otpy.testing import LeakError, inject_failure, isolated_tree, wait_down, wait_for

DEADLINE = 10.0
MB = 1024 * 1024


def agent(parent: otpy.Pid) -> None:
    """Does what it is told; reports every BadMessage to ``parent``."""
    notes = []
    while True:
        m = otpy.receive()
        if isinstance(m, otpy.BadMessage):
            otpy.send(parent, ("bad", m.error))
            continue
        match m:
            case ("echo", to, x):
                otpy.send(to, ("echo", x))
            case ("open", to):
                try:
                    os.close(os.open("/dev/null", os.O_RDONLY))
                    otpy.send(to, ("open", 0))
                except OSError as exc:
                    otpy.send(to, ("open", exc.errno))
            case ("tell", to, x):
                otpy.send(to, x)
            case ("forward", x):
                otpy.send(parent, ("forwarded", x))
            case ("watch", other, path):
                otpy.monitor(other)
            case otpy.Down(pid=other):  # notices cross a partition; a note to itself too
                otpy.send(otpy.self(), ("note", ("down", other)))
            case ("note", x):
                notes.append(x)
                open(path, "w").close()  # a side channel the partition does not cut
            case ("notes", to):
                otpy.send(to, ("notes", list(notes)))


AGENTS: list[otpy.Pid] = []


@pytest.fixture(autouse=True)
def _stop_agents():
    yield
    refs = [otpy.monitor(p) for p in AGENTS]
    for pid in AGENTS:
        otpy.exit(pid, "kill")
    for ref in refs:
        wait_down(ref, DEADLINE)
    AGENTS.clear()


def start_agent() -> otpy.Pid:
    pid = otpy.spawn(agent, otpy.self())
    AGENTS.append(pid)
    assert echo(pid, "up") == "up"  # running, and its reply path to us is open
    return pid


def echo(pid: otpy.Pid, x, timeout: float = DEADLINE):
    otpy.send(pid, ("echo", otpy.self(), x))
    return otpy.receive(timeout=timeout, match=lambda m: m == ("echo", x))[1]


def rtt(pid: otpy.Pid, x) -> float:
    started = time.monotonic()
    echo(pid, x)
    return time.monotonic() - started


def rss(pid: otpy.Pid) -> int:
    return otpy.process_info(pid)["memory"]


def state(pid: otpy.Pid) -> str:
    with open(f"/proc/{pid.os_pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def no_message(match) -> bool:
    try:
        otpy.receive(timeout=0, match=match)
    except otpy.Timeout:
        return True
    return False


# ---- crash, exit, hang: signals -----------------------------------------------------

def test_crash_is_a_real_sigkill():
    pid = start_agent()
    ref = otpy.monitor(pid)
    injection = inject_failure("crash", pid)
    assert wait_down(ref, DEADLINE) == "killed"
    injection.heal()  # nothing to undo, and no error


def test_crash_with_another_signal_and_by_name():
    pid = start_agent()
    otpy.register("victim", pid)
    ref = otpy.monitor(pid)
    inject_failure("crash", "victim", signal=signal.SIGTERM)
    assert wait_down(ref, DEADLINE) == ("signal", "SIGTERM")


def test_exit_sends_an_exit_signal_with_the_reason():
    pid = start_agent()
    ref = otpy.monitor(pid)
    inject_failure("exit", pid, reason="injected by test")
    assert wait_down(ref, DEADLINE) == "injected by test"


def test_hang_stops_the_process_until_healed():
    pid = start_agent()
    injection = inject_failure("hang", pid)
    assert state(pid) == "T"
    assert otpy.is_alive(pid)
    injection.heal()
    assert echo(pid, "back") == "back"
    assert state(pid) != "T"


def test_hang_for_a_duration_resumes_by_itself():
    pid = start_agent()
    inject_failure("hang", pid, duration=0.2)
    assert echo(pid, "resumed") == "resumed"  # answered once SIGCONT came


# ---- faults the target's runtime applies ---------------------------------------------

def test_slow_delays_each_message_until_healed():
    pid = start_agent()
    with inject_failure("slow", pid, delay=0.5):
        assert rtt(pid, 1) >= 0.5
    assert rtt(pid, 2) < 0.5


def test_partition_drops_messages_both_ways_and_keeps_the_process_alive():
    pid = start_agent()
    injection = inject_failure("partition", pid)
    otpy.send(pid, ("echo", otpy.self(), "lost"))  # dropped on arrival
    assert otpy.is_alive(pid)
    injection.heal()
    assert echo(pid, "after") == "after"  # sent after the heal: it gets through
    assert no_message(lambda m: m == ("echo", "lost"))  # it would have come first


def test_a_partitioned_process_still_gets_notices_and_its_own_messages(otpy_tree):
    pid, other = start_agent(), start_agent()
    noted = os.path.join(otpy_tree.tmp_path, "noted")
    otpy.send(pid, ("watch", other, noted))
    assert echo(pid, "watching") == "watching"
    with inject_failure("partition", pid):
        otpy.exit(other, "kill")
        wait_for(lambda: os.path.exists(noted), DEADLINE)
    otpy.send(pid, ("notes", otpy.self()))
    notes = otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "notes")[1]
    assert notes == [("down", other)]


def test_partition_between_given_peers():
    a, b = start_agent(), start_agent()
    injection = inject_failure("partition", a, peers=[b])
    otpy.send(a, ("tell", b, ("forward", "a->b lost")))
    otpy.send(b, ("tell", a, ("forward", "b->a lost")))
    assert echo(a, "a still talks to us") == "a still talks to us"
    assert echo(b, "b too") == "b too"
    injection.heal()
    otpy.send(a, ("tell", b, ("forward", "a->b")))
    otpy.send(b, ("tell", a, ("forward", "b->a")))
    got = {otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "forwarded")[1] for _ in range(2)}
    assert got == {"a->b", "b->a"}
    # each agent forwards in order: the lost ones would have arrived before these
    assert no_message(lambda m: type(m) is tuple and m[0] == "forwarded")


def test_heal_undoes_every_part_even_when_one_does_not_answer():
    a, b, c = start_agent(), start_agent(), start_agent()
    injection = inject_failure("partition", a, peers=[b, c], timeout=0.5)
    os.kill(c.os_pid, signal.SIGSTOP)  # c cannot take its part of the heal
    try:
        with pytest.raises(otpy.Timeout, match=repr(c).replace("<", ".").replace(">", ".")):
            injection.heal()
    finally:
        os.kill(c.os_pid, signal.SIGCONT)
    otpy.send(b, ("tell", a, ("forward", "b->a")))  # b was healed after c failed
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "forwarded")[1] == "b->a"


def test_a_tree_reports_every_part_its_heal_could_not_undo():
    a, b, c = start_agent(), start_agent(), start_agent()  # in the test's tree
    try:
        with pytest.raises(LeakError) as info:
            with isolated_tree("inner"):
                inject_failure("partition", a, peers=[b, c], timeout=1.0)
                for stuck in (b, c):  # neither can take its part of the heal
                    os.kill(stuck.os_pid, signal.SIGSTOP)
    finally:
        for stuck in (b, c):
            os.kill(stuck.os_pid, signal.SIGCONT)
    report = str(info.value)
    assert "on_exit" in report and "failed: Timeout: " in report
    assert "; also not healed: " in report  # the second failure, as a note of the first
    assert repr(b) in report and repr(c) in report


def test_partition_for_a_duration_heals_by_itself():
    pid = start_agent()
    injection = inject_failure("partition", pid, duration=0.1)
    wait_for(lambda: injection.healed)
    assert echo(pid, "through") == "through"


def test_corrupt_gives_bad_messages_and_the_process_carries_on():
    pid = start_agent()
    inject_failure("corrupt", pid, count=2)
    for i in range(3):
        otpy.send(pid, ("echo", otpy.self(), i))
    for _ in range(2):
        kind, error = otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "bad")
        assert "UnpicklingError" in error
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "echo") == ("echo", 2)
    assert echo(pid, "fine") == "fine"  # back to normal after count messages


def test_memory_at_once_is_resident_and_freed_on_heal():
    pid = start_agent()
    before = rss(pid)
    injection = inject_failure("memory", pid, megabytes=64)
    assert rss(pid) - before >= 60 * MB
    injection.heal()
    assert rss(pid) - before < 30 * MB


def test_memory_leak_grows_at_a_rate_until_healed():
    pid = start_agent()
    before = rss(pid)
    injection = inject_failure("memory", pid, rate=200, limit=40)
    wait_for(lambda: rss(pid) - before >= 38 * MB)
    injection.heal()
    assert rss(pid) - before < 20 * MB


def test_fds_exhausts_the_targets_descriptors_until_healed():
    pid = start_agent()
    otpy.send(pid, ("open", otpy.self()))
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "open") == ("open", 0)
    injection = inject_failure("fds", pid)
    otpy.send(pid, ("open", otpy.self()))
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "open") == ("open", errno.EMFILE)
    injection.heal()
    otpy.send(pid, ("open", otpy.self()))
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "open") == ("open", 0)


# ---- undone at the end of the tree -----------------------------------------------------

def test_injections_are_healed_when_their_tree_exits():
    outside = start_agent()  # in the test's own tree: outlives the inner one
    other = start_agent()
    with isolated_tree("inner"):
        inject_failure("hang", outside)
        inject_failure("partition", other)
        assert state(outside) == "T"
    assert echo(outside, "resumed") == "resumed"
    assert echo(other, "reconnected") == "reconnected"


def test_injecting_into_a_dead_process_is_noproc():
    pid = start_agent()
    inject_failure("crash", pid)
    wait_down(pid, DEADLINE)
    for kind, opts in [("crash", {}), ("hang", {}), ("slow", {"delay": 1})]:
        with pytest.raises(otpy.NoProc):
            inject_failure(kind, pid, **opts)


def test_healing_after_the_target_died_is_harmless():
    pid = start_agent()
    injection = inject_failure("slow", pid, delay=0.01)
    inject_failure("crash", pid)
    wait_down(pid, DEADLINE)
    injection.heal()
    assert injection.healed


def test_a_process_not_receiving_times_out_and_is_told_to_drop_the_fault():
    pid = otpy.spawn(spin)
    AGENTS.append(pid)
    with pytest.raises(otpy.Timeout, match="did not apply"):
        inject_failure("slow", pid, delay=1, timeout=0.2)


def spin() -> None:
    while True:
        pass


def test_bad_requests_name_what_is_wrong():
    pid = start_agent()
    with pytest.raises(ValueError, match="unknown failure kind 'melt'"):
        inject_failure("melt", pid)
    with pytest.raises(TypeError, match="delay"):
        inject_failure("hang", pid, delay=1)
    with pytest.raises(ValueError, match="delay="):
        inject_failure("slow", pid)
    with pytest.raises(ValueError, match="exactly one of megabytes= or rate="):
        inject_failure("memory", pid)
    with pytest.raises(ValueError, match="count="):
        inject_failure("corrupt", pid, count=0)
    with pytest.raises(ValueError, match="duration"):
        inject_failure("hang", pid, duration=-1)
    with pytest.raises(otpy.NoProc, match="nobody"):
        inject_failure("crash", "nobody")
    with pytest.raises(ValueError, match="calling process"):
        inject_failure("crash", otpy.self())
    with pytest.raises(TypeError, match="a failure target"):
        inject_failure("crash", 42)
    assert echo(pid, "untouched") == "untouched"
