"""Exit reasons: every way of dying is reported, specifically and intact."""

from __future__ import annotations

import ctypes
import dataclasses
import faulthandler
import os
import signal
import subprocess
import sys
import time
import traceback

import otpy
import pytest
from otpy.testing import wait_for

from helpers import DEADLINE, busy, expect, expect_down, idle


@dataclasses.dataclass(frozen=True)
class Custom:
    code: int
    detail: tuple


def raise_deep():
    def inner_failure():
        raise KeyError("missing thing")

    inner_failure()


def raise_chained():
    try:
        {}["x"]
    except KeyError as exc:
        raise RuntimeError("wrapped") from exc


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("carries a generator")
        self.gen = (x for x in [1])


def raise_unpicklable():
    raise Unpicklable()


def died(fn, *args):
    pid, ref = otpy.spawn_monitor(fn, *args)
    down = expect_down(ref)
    assert down.pid == pid
    return pid, down.reason


def test_return_is_normal():
    assert died(lambda: 42)[1] == "normal"


def test_an_exception_is_the_reason_with_remote_traceback_and_pid():
    pid, reason = died(raise_deep)
    assert isinstance(reason, KeyError) and reason.args == ("missing thing",)
    assert reason.otpy_pid == pid
    text = "".join(traceback.format_exception(reason))
    assert "inner_failure" in text and "raise_deep" in text and "test_reasons.py" in text


def test_exception_chains_survive():
    _, reason = died(raise_chained)
    assert isinstance(reason, RuntimeError)
    assert isinstance(reason.__cause__, KeyError)


def test_an_unpicklable_exception_arrives_as_remote_error_with_its_text():
    pid, reason = died(raise_unpicklable)
    assert isinstance(reason, otpy.RemoteError)
    assert "Unpicklable" in reason.type_name and "carries a generator" in reason.text
    assert "raise_unpicklable" in reason.formatted
    assert reason.otpy_pid == pid


@pytest.mark.parametrize("code, reason", [(3, ("exit", 3)), (0, "normal"), (None, "normal"),
                                          ("bye", ("exit", "bye"))])
def test_sys_exit(code, reason):
    assert died(sys.exit, code)[1] == reason


def test_os_exit_without_last_words_reports_the_code():
    assert died(os._exit, 7)[1] == ("exit", 7)


def test_exit_kill_is_killed():
    pid = otpy.spawn(busy)
    ref = otpy.monitor(pid)
    otpy.exit(pid, "kill")
    assert expect_down(ref).reason == "killed"


def test_sigkill_is_killed():
    me = otpy.self()
    pid = otpy.spawn(lambda: (otpy.send(me, "ready"), busy()))
    ref = otpy.monitor(pid)
    expect(lambda m: m == "ready")
    os.kill(pid.os_pid, signal.SIGKILL)
    assert expect_down(ref).reason == "killed"


def segfault():
    # pytest enables faulthandler, and the child inherits it: without this
    # the crash would print a "Fatal Python error" dump into a green run
    faulthandler.disable()
    ctypes.string_at(0)


def test_segfault_is_reported_with_the_signal_name():
    assert died(segfault)[1] == ("signal", "SIGSEGV")


def test_other_signals_are_named():
    assert died(lambda: os.kill(os.getpid(), signal.SIGTERM))[1] == ("signal", "SIGTERM")


@pytest.mark.parametrize("term", [
    ("shutdown", {"nested": [1, 2.5, None]}),
    Custom(7, ("a", b"bytes")),
    frozenset({1, 2}),
    "kill me softly",
])
def test_any_picklable_term_is_a_reason_and_arrives_equal(term):
    pid = otpy.spawn(idle)
    ref = otpy.monitor(pid)
    otpy.exit(pid, term)
    assert expect_down(ref).reason == term


IDLE_NODE = """
import sys, otpy
def idle():
    otpy.receive()
pid = otpy.spawn(idle)  # the zygote now waits on this process's pidfd
print(otpy.lowlevel.zygote_os_pid(), pid.os_pid, flush=True)
sys.stdin.read()
"""


def test_deaths_are_observed_through_an_os_event_not_polling():
    """When idle, the zygote sleeps in epoll_wait with an infinite timeout.

    A node of its own: in this one, a timer an earlier test left (send_after to
    a process that has died since still fires, as in Erlang) would make the
    zygote's wait finite, and that is no poll."""
    program = subprocess.Popen([sys.executable, "-c", IDLE_NODE], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        zygote, child = map(int, program.stdout.readline().split())
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:  # it may still be answering the spawn
            fields = open(f"/proc/{zygote}/syscall").read().split()
            if fields[0] in ("232", "281"):  # epoll_wait / epoll_pwait (x86_64)
                break
        assert fields[0] in ("232", "281"), fields
        assert int(fields[4], 16) in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF), fields  # forever
        os.kill(child, signal.SIGKILL)  # and a death still wakes it: it reaps the child
        wait_for(lambda: not os.path.exists(f"/proc/{child}"), timeout=DEADLINE)
    finally:
        program.stdin.close()
        try:
            program.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            program.kill()  # its node goes with it
            program.wait()
        program.stdout.close()
