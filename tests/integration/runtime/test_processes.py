"""Spawning, pids, sending and receiving."""

from __future__ import annotations

import pickle
import threading

import otpy
import pytest

from helpers import DEADLINE, echo, expect, expect_down, idle, kill_and_wait, others


def module_level_body(parent, value):
    otpy.send(parent, ("module", value))


def test_spawn_runs_a_module_function_in_another_os_process():
    import os

    me = otpy.self()
    pid = otpy.spawn(lambda: otpy.send(me, ("os_pid", os.getpid(), otpy.self())))
    assert expect(lambda m: m[0] == "os_pid") == ("os_pid", pid.os_pid, pid)
    assert pid.os_pid != os.getpid()
    pid2 = otpy.spawn(module_level_body, me, 7)
    assert expect(lambda m: m[0] == "module") == ("module", 7)
    assert pid2 != pid


def test_spawn_runs_a_lambda_and_a_closure_with_kwargs():
    me = otpy.self()
    counter = {"base": 40}

    def closure(extra, *, plus):
        otpy.send(me, counter["base"] + extra + plus)

    otpy.spawn(closure, 1, plus=1)
    assert otpy.receive(timeout=DEADLINE) == 42


def test_spawn_rejects_non_callables_and_unpicklable_bodies():
    with pytest.raises(TypeError, match="callable"):
        otpy.spawn(42)
    with pytest.raises(otpy.SerializationError, match="generator"):
        otpy.spawn(idle_with, (x for x in range(3)))
    assert others() == []  # nothing half-started


def idle_with(_arg):
    otpy.receive()


def test_pid_is_hashable_ordered_picklable_and_readable():
    a = otpy.spawn(idle)
    b = otpy.spawn(idle)
    try:
        assert a != b and len({a, b, a}) == 2
        assert a < b and sorted([b, a]) == [a, b]
        copy = pickle.loads(pickle.dumps(a))
        assert copy == a and hash(copy) == hash(a) and copy.os_pid == a.os_pid
        assert str(a.os_pid) in repr(a) and "Pid" in repr(a)
    finally:
        kill_and_wait([a, b])


def test_pid_sent_in_a_message_is_usable_by_the_receiver():
    me = otpy.self()
    e = otpy.spawn(echo)
    relay = otpy.spawn(lambda: otpy.send(otpy.receive()[0], (me, "via relay")))
    otpy.send(relay, (e,))
    assert otpy.receive(timeout=DEADLINE) == ("echo", "via relay")
    otpy.send(e, "stop")


def test_send_to_unknown_name_raises_noproc():
    with pytest.raises(otpy.NoProc, match="nobody"):
        otpy.send("nobody", "hello")


def test_send_to_a_dead_pid_is_silently_dropped():
    pid, ref = otpy.spawn_monitor(lambda: None)
    expect_down(ref)
    otpy.send(pid, "into the void")  # no error


def test_send_rejects_bad_destinations():
    with pytest.raises(TypeError, match="Pid or a registered name"):
        otpy.send(1234, "x")


def test_unpicklable_message_fails_in_the_sender_naming_the_type_and_sends_nothing():
    me = otpy.self()
    e = otpy.spawn(echo)
    with pytest.raises(otpy.SerializationError, match="generator"):
        otpy.send(e, (me, (x for x in range(3))))
    otpy.send(e, (me, "after"))
    assert otpy.receive(timeout=DEADLINE) == ("echo", "after")  # and nothing before it
    otpy.send(e, "stop")


def test_lambdas_travel_in_messages_through_dill():
    me = otpy.self()
    worker = otpy.spawn(lambda: otpy.send(me, otpy.receive()(20)))
    otpy.send(worker, lambda x: x * 2 + 2)
    assert otpy.receive(timeout=DEADLINE) == 42


def test_selective_receive_leaves_other_messages_in_order():
    me = otpy.self()
    for m in ["a", 1, "b", 2, "c"]:
        otpy.send(me, m)
    assert otpy.receive(timeout=DEADLINE, match=lambda m: isinstance(m, int)) == 1
    assert otpy.receive(timeout=DEADLINE, match=lambda m: isinstance(m, int)) == 2
    assert [otpy.receive(timeout=0) for _ in range(3)] == ["a", "b", "c"]


def test_receive_timeout_raises_timeout_a_timeouterror():
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0.05)
    assert issubclass(otpy.Timeout, TimeoutError) and issubclass(otpy.Timeout, otpy.OtpyError)


def test_receive_timeout_zero_sees_what_already_arrived():
    me = otpy.self()
    ref = otpy.monitor(otpy.spawn(lambda: otpy.send(me, "arrived")))
    expect_down(ref)  # the message was sent before the death, so it is queued
    assert otpy.receive(timeout=0) == "arrived"
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0)


def test_receive_in_a_spawned_process_times_out():
    me = otpy.self()

    def body():
        try:
            otpy.receive(timeout=0.01)
        except otpy.Timeout:
            otpy.send(me, "timed out")

    otpy.spawn(body)
    assert otpy.receive(timeout=DEADLINE) == "timed out"


def test_threads_of_one_process_share_its_mailbox():
    me = otpy.self()
    got = []

    def waiter(tag):
        got.append(otpy.receive(timeout=DEADLINE, match=lambda m: m == tag))

    threads = [threading.Thread(target=waiter, args=(t,)) for t in ("x", "y")]
    for t in threads:
        t.start()
    sender, ref = otpy.spawn_monitor(lambda: (otpy.send(me, "y"), otpy.send(me, "x")))
    for t in threads:
        t.join(DEADLINE)
    assert sorted(got) == ["x", "y"]
    assert expect_down(ref).reason == "normal"  # the Down went to the mailbox, not a waiter


def test_send_after_delivers_and_cancel_timer_stops_it():
    me = otpy.self()
    otpy.send_after(me, "later", 0.01)
    assert otpy.receive(timeout=DEADLINE) == "later"
    ref = otpy.send_after(me, "never", 30)
    remaining = otpy.cancel_timer(ref)
    assert remaining is not None and 0 < remaining <= 30
    assert otpy.cancel_timer(ref) is None
    fired = otpy.send_after(me, "fired", 0)
    assert otpy.receive(timeout=DEADLINE) == "fired"
    assert otpy.cancel_timer(fired) is None


def test_send_after_to_a_name_resolves_at_expiry():
    me = otpy.self()
    e = otpy.spawn(echo)
    otpy.send_after("late_echo", (me, "timer"), 0.05)
    otpy.register("late_echo", e)
    assert otpy.receive(timeout=DEADLINE) == ("echo", "timer")
    otpy.send(e, "stop")


@pytest.mark.parametrize("size", [32 * 1024 - 5, 32 * 1024 + 1, 8 * 1024 * 1024])
def test_messages_around_the_inline_limit_arrive_intact(size):
    me = otpy.self()
    e = otpy.spawn(echo)
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    otpy.send(e, (me, payload))
    assert otpy.receive(timeout=DEADLINE) == ("echo", payload)
    otpy.send(e, "stop")


def test_a_256_mib_message_arrives_intact():
    me = otpy.self()

    def measure():
        blob = otpy.receive()
        otpy.send(me, (len(blob), blob[:8], blob[-8:], hash(blob)))

    pid = otpy.spawn(measure)
    blob = bytes(256 * 1024 * 1024 - 64)
    blob = b"HEAD" + blob[8:] + b"TAIL"
    otpy.send(pid, blob)
    assert otpy.receive(timeout=60) == (len(blob), blob[:8], blob[-8:], hash(blob))


def test_a_message_the_receiver_cannot_unpickle_arrives_as_badmessage():
    me = otpy.self()
    pid = otpy.spawn(lambda: otpy.send(me, otpy.receive()))
    otpy.send(pid, Unloadable())
    got = otpy.receive(timeout=DEADLINE)
    assert isinstance(got, otpy.BadMessage) and "refuses" in got.error


class Unloadable:
    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    if otpy.self().serial != 1:
        raise RuntimeError("refuses to load here")
    return "loaded in the program"


def test_self_is_stable_and_the_program_is_a_process():
    me = otpy.self()
    assert otpy.self() == me and otpy.is_alive(me)
    assert me in otpy.processes()


def test_process_info_reports_the_process_and_none_once_dead():
    import time

    me = otpy.self()
    before = time.time()

    def body():
        otpy.register("informed")
        otpy.trap_exit(True)
        otpy.link(me)
        otpy.send(me, "ready")
        otpy.receive(match=lambda m: m == "go")  # leaves the other messages queued
        otpy.send(me, "waiting again")
        otpy.receive(match=lambda m: m == "never")

    pid = otpy.spawn(body)
    otpy.receive(timeout=DEADLINE, match=lambda m: m == "ready")
    watcher = otpy.spawn(lambda: (otpy.monitor(pid), otpy.send(me, "monitoring"), otpy.receive()))
    otpy.receive(timeout=DEADLINE, match=lambda m: m == "monitoring")
    for i in range(3):
        otpy.send(pid, i)
    otpy.send(pid, "go")
    otpy.receive(timeout=DEADLINE, match=lambda m: m == "waiting again")
    info = otpy.process_info(pid)
    assert info["pid"] == pid and info["os_pid"] == pid.os_pid and info["name"] == "informed"
    assert info["links"] == [me] and info["trap_exit"] is True and info["parent"] == me
    assert info["message_queue_len"] == 3  # 0, 1, 2 were read and not received
    assert info["status"] in ("waiting", "running") and info["memory"] > 1_000_000
    assert before - 1 <= info["started_at"] <= time.time()
    assert info["monitored_by"] == [watcher]
    assert otpy.process_info(watcher)["monitors"] == [pid]
    kill_and_wait([pid, watcher])
    assert otpy.process_info(pid) is None
