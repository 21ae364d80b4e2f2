"""GenServer: start, call, cast, reply later, stop, terminate, crashes."""

from __future__ import annotations

import os
import signal

import otpy
import pytest

from helpers import DEADLINE, expect, expect_down
from servers import Counter, FailingInit


def test_start_link_returns_after_init_and_serves_calls_and_casts():
    pid = Counter.start_link(10, name="counter")
    assert otpy.whereis("counter") == pid
    assert otpy.call("counter", "get") == 10
    otpy.cast("counter", ("add", 5))
    assert otpy.call(pid, ("add", 1)) == 16
    otpy.stop("counter")
    assert otpy.whereis("counter") is None and not otpy.is_alive(pid)


def test_start_without_link_and_without_name():
    pid = Counter.start(1)
    assert otpy.process_info(pid)["links"] == []
    assert otpy.call(pid, "get") == 1
    otpy.stop(pid)


def test_init_raising_makes_start_raise_starterror_and_leaves_the_name_free():
    with pytest.raises(otpy.StartError) as info:
        FailingInit.start_link("raise", name="fragile")
    assert isinstance(info.value.reason, KeyError)
    assert otpy.whereis("fragile") is None
    with pytest.raises(otpy.Timeout):  # no Exit from the failed server reaches us
        otpy.receive(timeout=0.05, match=lambda m: isinstance(m, otpy.Exit))
    with pytest.raises(otpy.StartError) as info:
        FailingInit.start_link("exit")
    assert info.value.reason == ("shutdown", "refused")


class BlockingInit(otpy.GenServer):
    def init(self):
        otpy.receive(match=lambda m: m == "never sent")


def start_link_blocking(parent, trap):
    otpy.trap_exit(trap)
    try:
        BlockingInit.start_link(timeout=0.2)
    except otpy.StartError as exc:
        otpy.send(parent, ("raised", str(exc)))
    with pytest.raises(otpy.Timeout):  # and no Exit from the killed server is left behind
        otpy.receive(timeout=0, match=lambda m: isinstance(m, otpy.Exit))
    otpy.send(parent, ("alive", otpy.self()))


@pytest.mark.parametrize("trap", [False, True])
def test_start_link_timeout_raises_starterror_and_the_caller_survives(trap):
    pid = otpy.spawn(start_link_blocking, otpy.self(), trap)
    ref = otpy.monitor(pid)
    first = expect(lambda m: (type(m) is tuple and m[0] == "raised")
                   or (type(m) is otpy.Down and m.ref == ref))
    assert first == ("raised", "BlockingInit did not finish init within 0.2s")
    assert expect(lambda m: type(m) is tuple and m[0] == "alive") == ("alive", pid)
    assert expect_down(ref).reason == "normal"


def test_init_returning_ignore_makes_start_return_none():
    before = set(otpy.processes())
    assert FailingInit.start_link("ignore", name="ignored") is None
    assert otpy.whereis("ignored") is None and set(otpy.processes()) == before


def test_a_taken_name_raises_already_started_and_starts_no_second_process():
    first = Counter.start_link(name="only_one")
    before = set(otpy.processes())
    with pytest.raises(otpy.AlreadyStarted) as info:
        Counter.start_link(name="only_one")
    assert info.value.pid == first
    assert set(otpy.processes()) == before
    probe = otpy.spawn(otpy.receive)
    assert probe.serial == first.serial + 1  # none was started in between, even briefly
    otpy.exit(probe, "kill")
    otpy.stop(first)


def test_noreply_then_reply_later():
    me = otpy.self()
    pid = Counter.start_link(3, report_to=me)

    def waiter():
        otpy.send(me, ("got", otpy.call(pid, "later")))

    waiting = otpy.spawn(waiter)
    assert expect(lambda m: m[0] == "parked") == ("parked", waiting)
    assert otpy.call(pid, ("add", 1)) == 4  # the server is free while the first call waits
    otpy.cast(pid, "release")
    assert expect(lambda m: m[0] == "got") == ("got", ("released", 4))
    otpy.stop(pid)


def test_a_callback_can_stop_the_server_with_a_reply_and_a_reason():
    me = otpy.self()
    pid = Counter.start(report_to=me)
    ref = otpy.monitor(pid)
    assert otpy.call(pid, ("stop", "enough")) == "stopping"
    assert expect(lambda m: m[0] == "terminate") == ("terminate", "enough")
    assert expect_down(ref).reason == "enough"
    pid = Counter.start(report_to=me)
    ref = otpy.monitor(pid)
    otpy.cast(pid, ("stop", ("shutdown", "cast")))
    assert expect_down(ref).reason == ("shutdown", "cast")


def test_call_to_a_dead_or_unknown_server_raises_noproc_at_once():
    with pytest.raises(otpy.NoProc):
        otpy.call("no_such_server", "get")
    pid = Counter.start()
    otpy.stop(pid)
    with pytest.raises(otpy.NoProc) as info:
        otpy.call(pid, "get")
    assert info.value.reason == "noproc" and isinstance(info.value, otpy.Exited)


def test_call_timeout_and_the_late_reply_is_dropped():
    pid = Counter.start()
    with pytest.raises(otpy.Timeout):
        otpy.call(pid, ("sleep_then_reply", 0.2), timeout=0.05)
    assert otpy.call(pid, "get") == 0  # the late reply arrived before this one...
    with pytest.raises(otpy.Timeout):  # ...and was dropped, not queued
        otpy.receive(timeout=0)
    otpy.stop(pid)


def _kill_when_parked() -> None:
    server = otpy.receive(match=lambda m: isinstance(m, otpy.Pid))
    otpy.receive(match=lambda m: type(m) is tuple and m[0] == "parked")
    os.kill(server.os_pid, signal.SIGKILL)


def test_server_dying_during_a_call_gives_exited_with_its_reason():
    pid = Counter.start()
    with pytest.raises(otpy.Exited) as info:
        otpy.call(pid, "crash")
    assert isinstance(info.value.reason, ValueError) and info.value.pid == pid
    # SIGKILLed once it holds the call: killed before, the call would get "noproc"
    killer = otpy.spawn(_kill_when_parked)
    parked = Counter.start(report_to=killer)
    otpy.send(killer, parked)
    with pytest.raises(otpy.Exited) as info:
        otpy.call(parked, "later", timeout=DEADLINE)
    assert info.value.reason == "killed"


def test_a_server_calling_itself_fails_at_once():
    pid = Counter.start()
    with pytest.raises(otpy.Exited) as info:
        otpy.call(pid, "self_call")
    inner = info.value.reason  # the server crashed on its own call, at once
    assert isinstance(inner, otpy.Exited) and inner.reason[0] == "calling_self"
    with pytest.raises(otpy.Exited, match="called itself"):
        otpy.call(otpy.self(), "anything")


def test_exception_in_a_callback_crashes_with_traceback_and_runs_terminate():
    me = otpy.self()
    pid = Counter.start(report_to=me)
    ref = otpy.monitor(pid)
    otpy.cast(pid, "crash")
    terminated = expect(lambda m: m[0] == "terminate")
    assert isinstance(terminated[1], RuntimeError)
    reason = expect_down(ref).reason
    assert isinstance(reason, RuntimeError) and reason.otpy_pid == pid
    import traceback

    assert "handle_cast" in "".join(traceback.format_exception(reason))


def test_terminate_runs_on_exit_from_the_parent_when_trapping():
    me = otpy.self()
    pid = Counter.start_link(report_to=me, trap=True)
    ref = otpy.monitor(pid)
    otpy.exit(pid, "shutdown")
    assert expect(lambda m: m[0] == "terminate") == ("terminate", "shutdown")
    assert expect_down(ref).reason == "shutdown"


def test_terminate_does_not_run_when_not_trapping_and_killed():
    me = otpy.self()
    pid = Counter.start_link(report_to=me)
    ref = otpy.monitor(pid)
    otpy.exit(pid, "shutdown")
    assert expect_down(ref).reason == "shutdown"
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0.1, match=lambda m: type(m) is tuple and m[0] == "terminate")


def test_exit_from_a_non_parent_goes_to_handle_info_when_trapping():
    me = otpy.self()
    pid = Counter.start(report_to=me, trap=True)
    other = otpy.spawn(lambda: otpy.exit(pid, "from elsewhere"))
    assert expect(lambda m: m[0] == "info") == ("info", otpy.Exit(other, "from elsewhere"))
    otpy.stop(pid)


def test_handle_info_gets_plain_messages():
    me = otpy.self()
    pid = Counter.start(report_to=me)
    otpy.send(pid, {"plain": "message"})
    assert expect(lambda m: m[0] == "info") == ("info", {"plain": "message"})
    otpy.stop(pid)


def test_stop_runs_terminate_with_the_reason():
    me = otpy.self()
    pid = Counter.start(report_to=me)
    otpy.stop(pid, ("shutdown", "bye"))
    assert expect(lambda m: m[0] == "terminate") == ("terminate", ("shutdown", "bye"))
    with pytest.raises(otpy.NoProc):
        otpy.stop(pid)


def deaf():
    otpy.receive(match=lambda m: False)


def test_stop_that_times_out_leaves_no_monitor_behind():
    pid = otpy.spawn(deaf)  # never answers the stop request
    with pytest.raises(otpy.Timeout):
        otpy.stop(pid, timeout=0.1)
    assert otpy.process_info(otpy.self())["monitors"] == []
    otpy.exit(pid, "kill")


def test_a_local_genserver_class_works():
    class Local(otpy.GenServer):
        def handle_call(self, request, caller):
            return request * 2

    pid = Local.start()
    assert otpy.call(pid, 21) == 42
    otpy.stop(pid)


def test_start_rejects_bad_arguments():
    with pytest.raises(TypeError, match="name"):
        Counter.start(name=42)
    with pytest.raises(TypeError, match="GenServer"):
        otpy.GenServer.start_link.__func__(int)
