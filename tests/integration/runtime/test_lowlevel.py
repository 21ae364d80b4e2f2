"""otpy.lowlevel: the pieces behaviours are built from, each on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import otpy
import pytest
from otpy import lowlevel

import helpers
from helpers import DEADLINE, expect, expect_down, expect_exit


def _ignore_shutdown(parent: otpy.Pid) -> None:
    otpy.trap_exit(True)
    otpy.send(parent, "trapping")
    while True:
        otpy.receive()  # an Exit "shutdown" arrives as a message and is ignored


def _obey_shutdown(parent: otpy.Pid) -> None:
    otpy.send(parent, "ready")
    otpy.receive()


def test_await_down_returns_the_reason_and_leaves_other_messages():
    pid, ref = otpy.spawn_monitor(lambda: os.kill(os.getpid(), signal.SIGKILL))
    otpy.send(otpy.self(), "unrelated")
    assert lowlevel.await_down(ref, DEADLINE) == "killed"  # SIGKILL is seen as "killed"
    assert otpy.receive(timeout=0) == "unrelated"


def test_await_down_times_out_on_a_live_process():
    pid, ref = otpy.spawn_monitor(otpy.receive)
    with pytest.raises(otpy.Timeout):
        lowlevel.await_down(ref, 0.01)
    otpy.exit(pid, "kill")
    assert lowlevel.await_down(ref, DEADLINE) == "killed"


def test_spawn_opt_links_and_monitors_before_the_body_runs():
    # a body that dies at once is still reported through both (trapping caller)
    pid, ref = lowlevel.spawn_opt(helpers.exit_with, ("gone",), link=True, monitor=True)
    assert expect_exit(pid).reason == "gone"
    assert expect_down(ref).reason == "gone"
    plain = lowlevel.spawn_opt(helpers.exit_with, kwargs={"reason": "normal"})
    assert type(plain) is otpy.Pid
    linked = lowlevel.spawn_opt(helpers.exit_with, ("gone too",), link=True)
    assert expect_exit(linked).reason == "gone too"


def _report_name(parent: otpy.Pid) -> None:
    otpy.send(parent, ("named", otpy.whereis("spawned_named"), lowlevel.process_name()))
    otpy.receive()


def test_spawn_opt_registers_the_name_before_the_body_runs_or_starts_nothing():
    pid = lowlevel.spawn_opt(_report_name, (otpy.self(),), name="spawned_named")
    assert expect(lambda m: type(m) is tuple and m[0] == "named") == \
        ("named", pid, "spawned_named")  # its first line already finds itself by name
    assert otpy.whereis("spawned_named") == pid
    with pytest.raises(otpy.AlreadyRegistered) as taken:
        lowlevel.spawn_opt(_report_name, (otpy.self(),), name="spawned_named")
    assert taken.value.pid == pid
    after = otpy.spawn(otpy.receive)
    assert after.serial == pid.serial + 1  # the refused spawn started no process
    with pytest.raises(TypeError):
        lowlevel.spawn_opt(otpy.receive, name="")
    for p in (pid, after):
        otpy.exit(p, "kill")


def test_stop_process_signals_then_returns_the_reason():
    pid = otpy.spawn(_obey_shutdown, otpy.self())
    expect(lambda m: m == "ready")
    assert lowlevel.stop_process(pid, "shutdown", timeout=DEADLINE) == "shutdown"
    assert not otpy.is_alive(pid)


def test_stop_process_kills_a_process_that_ignores_the_signal():
    pid = otpy.spawn(_ignore_shutdown, otpy.self())
    expect(lambda m: m == "trapping")
    assert lowlevel.stop_process(pid, "shutdown", timeout=0.05) == "killed"


def test_stop_process_unlinks_so_the_caller_gets_no_exit():
    pid = otpy.spawn_link(_obey_shutdown, otpy.self())
    expect(lambda m: m == "ready")
    lowlevel.stop_process(pid, "custom", timeout=DEADLINE)
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0.05, match=lambda m: isinstance(m, otpy.Exit))


def test_stop_process_of_a_dead_pid_is_noproc():
    pid, ref = otpy.spawn_monitor(lambda: None)
    lowlevel.await_down(ref, DEADLINE)
    assert lowlevel.stop_process(pid) == "noproc"


def _busy_trapping(parent: otpy.Pid) -> None:
    otpy.trap_exit(True)
    otpy.send(parent, "trapping")
    while True:  # busy outside otpy: it would never read an exit signal
        pass


def test_kill_records_the_reason_and_cannot_be_trapped():
    pid = otpy.spawn_link(_busy_trapping, otpy.self())
    expect(lambda m: m == "trapping")
    ref = otpy.monitor(pid)
    lowlevel.kill(pid, ("shutdown", "command_timeout"))
    assert lowlevel.await_down(ref, DEADLINE) == ("shutdown", "command_timeout")
    # linked processes get the same reason: the program (trapping) as an Exit
    assert expect(lambda m: isinstance(m, otpy.Exit) and m.pid == pid).reason == \
        ("shutdown", "command_timeout")
    lowlevel.kill(pid, "again")  # a dead pid: nothing happens
    with pytest.raises(ValueError, match="exit"):
        lowlevel.kill(pid, "kill")
    with pytest.raises(TypeError, match="Pid"):
        lowlevel.kill("name", "why")


def test_a_child_killed_with_a_shutdown_reason_is_a_clean_exit_for_its_supervisor():
    """transient: restarted after "killed", not after ("shutdown", why)."""
    spec = otpy.ChildSpec("c", otpy.spawn_link, args=(_busy_trapping, otpy.self()),
                          restart="transient")
    sup = otpy.Supervisor.start_link([spec])
    expect(lambda m: m == "trapping")
    child = otpy.Supervisor.which_children(sup)[0].pid
    ref = otpy.monitor(child)
    lowlevel.kill(child, ("shutdown", "planned"))
    lowlevel.await_down(ref, DEADLINE)
    # its Exit reached the supervisor before our Down (links first): handled by now
    assert otpy.Supervisor.which_children(sup) == [("c", None, "worker")]  # not restarted
    otpy.Supervisor.stop(sup)


class Ops(otpy.GenServer):
    def handle_call(self, request, caller):
        return lowlevel.dispatch(self, request)

    def _op_double(self, n):
        return 2 * n

    def _op_fail(self):
        raise KeyError("missing")


def test_ask_returns_values_and_raises_server_errors_in_the_caller():
    pid = Ops.start_link()
    assert lowlevel.ask(pid, ("double", 21)) == 42
    with pytest.raises(KeyError, match="missing"):
        lowlevel.ask(pid, ("fail",))
    with pytest.raises(ValueError, match="no operation 'nope'"):
        lowlevel.ask(pid, ("nope",))
    assert lowlevel.ask(pid, ("double", 1)) == 2  # the server carried on
    otpy.stop(pid)


def test_request_raises_the_callees_exit_reason_not_a_timeout():
    pid = otpy.spawn(lambda: otpy.receive() and os.kill(os.getpid(), signal.SIGKILL))
    ref = otpy.make_ref()
    with pytest.raises(otpy.Exited) as info:
        lowlevel.request(pid, ("anything", ref), ref, timeout=DEADLINE)
    assert info.value.reason == "killed"


def _reply_when_told(parent: otpy.Pid) -> None:
    _, ref = otpy.receive()
    otpy.send(parent, "got the first")
    otpy.receive(match=lambda m: m == "go")
    lowlevel.reply(lowlevel.From(parent, ref), "the first's reply")


def test_a_ref_already_awaited_is_refused_and_the_first_request_still_gets_its_reply():
    pid = otpy.spawn(_reply_when_told, otpy.self())
    ref = otpy.make_ref()
    got = []
    first = threading.Thread(
        target=lambda: got.append(lowlevel.request(pid, ("first", ref), ref, timeout=DEADLINE)))
    first.start()
    try:
        expect(lambda m: m == "got the first")  # the first request is in flight
        with pytest.raises(ValueError, match="already awaited"):
            lowlevel.request(pid, ("second", ref), ref, timeout=DEADLINE)
    finally:
        otpy.send(pid, "go")
        first.join(DEADLINE)
    assert got == ["the first's reply"]


def test_call_and_reply_with_a_hand_written_server():
    def server():
        kind, caller, request = otpy.receive()
        assert kind == lowlevel.CALL
        lowlevel.reply(lowlevel.From(*caller), ("echo", request))

    pid = otpy.spawn(server)
    assert lowlevel.call(pid, "hi") == ("echo", "hi")


def test_shutdown_child_follows_the_spec():
    pid = otpy.spawn_link(_ignore_shutdown, otpy.self())
    expect(lambda m: m == "trapping")
    assert lowlevel.shutdown_child(pid, 0.05) == "killed"
    pid = otpy.spawn_link(_ignore_shutdown, otpy.self())
    expect(lambda m: m == "trapping")
    assert lowlevel.shutdown_child(pid, "brutal_kill") == "killed"


def test_restart_intensity_window_edges():
    now = [0.0]
    window = lowlevel.RestartIntensity(2, 10.0, clock=lambda: now[0])
    assert not window.add() and not window.add()
    now[0] = 5.0
    assert window.add()  # the third within 10 s
    now[0] = 10.0  # the first two are exactly 10 s old: no longer counted
    assert window.count() == 1
    with pytest.raises(ValueError, match="max_restarts"):
        lowlevel.RestartIntensity(-1, 1.0)
    with pytest.raises(ValueError, match="max_seconds"):
        lowlevel.RestartIntensity(1, 0)


def test_child_spec_is_validated_and_is_clean_knows_the_clean_reasons():
    with pytest.raises(ValueError, match="restart"):
        lowlevel.ChildSpec("x", otpy.spawn_link, restart="sometimes")
    with pytest.raises(ValueError, match="shutdown"):
        lowlevel.ChildSpec("x", otpy.spawn_link, shutdown=-1)
    assert lowlevel.ChildSpec("s", otpy.spawn_link, type="supervisor").shutdown == "infinity"
    assert all(map(lowlevel.is_clean, ["normal", "shutdown", ("shutdown", 1)]))
    assert not lowlevel.is_clean("killed")


def test_annotate_shows_in_the_node_tables():
    pid = otpy.spawn(otpy.receive)
    lowlevel.annotate(pid, behaviour="Pool", in_use="3/10")
    with pytest.raises(TypeError, match="in_use"):
        lowlevel.annotate(pid, in_use=[3])
    otpy.exit(pid, "kill")


def test_namespaces_are_left_innermost_first_or_an_otpy_error_names_both():
    outer = lowlevel.current_namespace()
    lowlevel.enter_namespace("ns-a")
    lowlevel.enter_namespace("ns-b")
    try:
        innermost = "'ns-a' is not the innermost .'ns-b' is"
        with pytest.raises(otpy.OtpyError, match=innermost) as info:
            lowlevel.leave_namespace("ns-a")
        assert isinstance(info.value, RuntimeError)  # its standard base, as before
        assert lowlevel.current_namespace() == "ns-b"  # nothing was left
    finally:
        lowlevel.leave_namespace("ns-b")
        lowlevel.leave_namespace("ns-a")
    assert lowlevel.current_namespace() == outer


def test_start_and_shutdown_of_the_node_on_purpose(tmp_path):
    script = textwrap.dedent("""
        import threading
        import otpy
        from otpy import lowlevel

        assert not lowlevel.node_running()
        me = lowlevel.start()  # before any thread of ours
        assert lowlevel.node_running() and me == otpy.self()
        zygote = lowlevel.zygote_os_pid()
        t = threading.Thread(target=lambda: otpy.spawn(otpy.receive))
        t.start(); t.join()
        lowlevel.shutdown()
        assert not lowlevel.node_running()
        import os
        try:
            os.kill(zygote, 0)
            print("zygote alive")
        except ProcessLookupError:
            print("zygote gone")
        print("restarted", lowlevel.start() != me)
        lowlevel.shutdown()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["zygote", "gone", "restarted", "True"]


def _reply_twice(parent: otpy.Pid) -> None:
    _, ref = otpy.receive()
    caller = lowlevel.From(parent, ref)
    lowlevel.reply(caller, "first")
    otpy.receive(match=lambda m: m == "again")
    lowlevel.reply(caller, "second")  # as a pool server answering for a dead worker
    otpy.send(parent, "replied again")


def test_a_second_answer_after_drop_late_reply_never_reaches_the_mailbox():
    pid = otpy.spawn(_reply_twice, otpy.self())
    ref = otpy.make_ref()
    assert lowlevel.request(pid, ("ask", ref), ref, timeout=DEADLINE) == "first"
    lowlevel.drop_late_reply(ref)
    otpy.send(pid, "again")
    expect(lambda m: m == "replied again")  # sent after the second answer: that came first
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: type(m) is tuple and m[:1] == ("$reply",))


def _answer_when_told(parent: otpy.Pid) -> None:
    """Tell the parent a call came, answer it once told "go"."""
    kind, (caller, ref), request = otpy.receive()
    otpy.send(parent, "called")
    otpy.receive(match=lambda m: m == "go")
    lowlevel.reply(lowlevel.From(caller, ref), ("answer", request))


def test_a_request_sent_in_one_thread_is_answered_in_another():
    pid = otpy.spawn(_answer_when_told, otpy.self())
    ref = otpy.make_ref()
    pending = lowlevel.send_request(pid, (lowlevel.CALL, (otpy.self(), ref), "q"), ref,
                                    timeout=DEADLINE)
    expect(lambda m: m == "called")
    assert pending.wait(limit=0.01) is lowlevel.NOT_YET  # not answered yet: still pending
    taken = helpers.in_thread(pending.wait)
    otpy.send(pid, "go")
    assert taken() == ("answer", "q")


def _never_answer() -> None:
    otpy.receive(match=lambda m: False)


def test_a_pending_reply_is_taken_in_an_event_loop_and_a_death_answers_it():
    import asyncio

    pid = otpy.spawn(_answer_when_told, otpy.self())
    ref = otpy.make_ref()
    pending = lowlevel.send_request(pid, (lowlevel.CALL, (otpy.self(), ref), "q"), ref, None)
    expect(lambda m: m == "called")
    otpy.send(pid, "go")
    assert asyncio.run(lowlevel.areply(pending)) == ("answer", "q")
    doomed = otpy.spawn(_never_answer)
    ref = otpy.make_ref()
    pending = lowlevel.send_request(doomed, (lowlevel.CALL, (otpy.self(), ref), "q"), ref, None)
    helpers.sigkill(doomed)
    with pytest.raises(otpy.Exited):
        pending.wait()
    with pytest.raises(otpy.NoProc):
        lowlevel.send_request(doomed, "late", otpy.make_ref(), None)
