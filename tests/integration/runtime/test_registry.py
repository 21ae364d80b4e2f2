"""Names: unique, released at death (SIGKILL included) before the death is observable."""

from __future__ import annotations

import os
import signal

import otpy
import pytest

from helpers import DEADLINE, echo, expect, expect_down, idle, kill_and_wait


def test_register_whereis_registered_unregister():
    pid = otpy.spawn(idle)
    assert otpy.whereis("svc") is None
    otpy.register("svc", pid)
    assert otpy.whereis("svc") == pid
    assert "svc" in otpy.registered()
    assert otpy.process_info(pid)["name"] == "svc"
    otpy.unregister("svc")
    assert otpy.whereis("svc") is None and "svc" not in otpy.registered()
    kill_and_wait([pid])


def test_register_defaults_to_the_caller():
    me = otpy.self()

    def body():
        otpy.register("self_named")
        otpy.send(me, "registered")
        otpy.receive()

    pid = otpy.spawn(body)
    expect(lambda m: m == "registered")
    assert otpy.whereis("self_named") == pid
    kill_and_wait([pid])


def test_send_by_name():
    me = otpy.self()
    pid = otpy.spawn(echo)
    otpy.register("echo_by_name", pid)
    otpy.send("echo_by_name", (me, "hi"))
    assert otpy.receive(timeout=DEADLINE) == ("echo", "hi")
    otpy.send("echo_by_name", "stop")


def test_a_taken_name_raises_already_registered_with_the_owner():
    a, b = otpy.spawn(idle), otpy.spawn(idle)
    otpy.register("taken", a)
    with pytest.raises(otpy.AlreadyRegistered) as info:
        otpy.register("taken", b)
    assert info.value.pid == a and info.value.name == "taken"
    assert otpy.whereis("taken") == a
    kill_and_wait([a, b])


def test_a_process_cannot_take_a_second_name():
    pid = otpy.spawn(idle)
    otpy.register("first", pid)
    with pytest.raises(otpy.AlreadyRegistered, match="already registered as 'first'"):
        otpy.register("second", pid)
    assert otpy.whereis("second") is None
    kill_and_wait([pid])


def test_registering_a_dead_pid_raises_noproc():
    pid, ref = otpy.spawn_monitor(lambda: None)
    expect_down(ref)
    with pytest.raises(otpy.NoProc):
        otpy.register("ghost", pid)
    assert otpy.whereis("ghost") is None


def test_bad_names_and_unknown_unregister_are_errors():
    with pytest.raises(TypeError, match="name"):
        otpy.register(42)
    with pytest.raises(TypeError, match="name"):
        otpy.whereis(("tuple",))
    with pytest.raises(otpy.NoProc, match="nobody_here"):
        otpy.unregister("nobody_here")


def test_the_name_is_free_once_the_down_arrives_for_every_cause():
    me = otpy.self()
    for cause in ("return", "raise", "exit", "sigkill"):
        def body(cause=cause):
            otpy.register("reusable")
            otpy.send(me, "named")
            if cause == "return":
                otpy.receive()
            elif cause == "raise":
                otpy.receive()
                raise RuntimeError("x")
            else:
                otpy.receive()

        pid, ref = otpy.spawn_monitor(body)
        expect(lambda m: m == "named")
        if cause == "sigkill":
            os.kill(pid.os_pid, signal.SIGKILL)
        elif cause == "exit":
            otpy.exit(pid, "shutdown")
        else:
            otpy.send(pid, "go")
        expect_down(ref)
        assert otpy.whereis("reusable") is None, cause
        otpy.register("reusable", otpy.spawn(idle))
        kill_and_wait([otpy.whereis("reusable")])


def test_sigkilled_owner_name_can_be_retaken_100_times():
    me = otpy.self()
    for i in range(100):
        pid = otpy.spawn(idle)
        otpy.register("hot_name", pid)
        ref = otpy.monitor(pid)
        os.kill(pid.os_pid, signal.SIGKILL)
        assert expect_down(ref).reason == "killed"
        assert otpy.whereis("hot_name") is None, f"iteration {i}"
    assert me == otpy.self()


def test_send_by_name_follows_a_name_to_its_new_owner():
    me = otpy.self()
    for i in range(5):
        pid = otpy.spawn(echo)
        otpy.register("moving", pid)
        otpy.send("moving", (me, i))
        assert otpy.receive(timeout=DEADLINE) == ("echo", i)
        ref = otpy.monitor(pid)
        otpy.exit(pid, "kill")
        expect_down(ref)
        with pytest.raises(otpy.NoProc):
            otpy.send("moving", (me, "nobody"))
