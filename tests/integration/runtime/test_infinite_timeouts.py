"""Every timeout the runtime, the behaviours and otpy.testing take accepts
None and math.inf as "no limit", and refuses nan, negatives, bools and
non-numbers before anything is sent or started (issue 21, item 2)."""

from __future__ import annotations

import math

import pytest

import otpy
from otpy import lowlevel
from otpy.testing import isolated_tree, synchronize, wait_down, wait_for

import helpers
from helpers import DEADLINE


class Echo(otpy.GenServer):
    def init(self, log=None):
        self.log = log

    def handle_call(self, request, caller):
        if self.log is not None:
            otpy.send(self.log, ("got", request))
        return request


def serve(cls, *args, **spec):
    return helpers.CURRENT_TREE.start_child(cls.child_spec(*args, **spec))


def test_receive_send_and_call_wait_without_limit_on_inf():
    me = otpy.self()
    otpy.send(me, "x", timeout=math.inf)
    assert otpy.receive(timeout=math.inf) == "x"
    pid = serve(Echo)
    assert otpy.call(pid, "ping", timeout=math.inf) == "ping"
    ref = otpy.make_ref()
    assert lowlevel.request(pid, (lowlevel.CALL, (me, ref), "r"), ref, math.inf) == "r"


def test_a_server_starts_and_stops_with_infinite_timeouts():
    pid = Echo.start(timeout=math.inf)
    mref = otpy.monitor(pid)
    otpy.stop(pid, timeout=math.inf)
    assert lowlevel.await_down(mref, timeout=math.inf) == "normal"
    other = Echo.start()
    assert lowlevel.stop_process(other, timeout=math.inf) == "shutdown"


@pytest.mark.parametrize("bad, error", [(math.nan, ValueError), (-0.5, ValueError),
                                        (True, TypeError), ("1", TypeError)])
def test_a_bad_call_timeout_is_refused_before_anything_is_sent(bad, error):
    pid = serve(Echo, otpy.self())
    with pytest.raises(error, match="call timeout"):
        otpy.call(pid, "never sent", timeout=bad)
    assert otpy.call(pid, "sent") == "sent"
    # the server saw only the second request
    assert helpers.expect(lambda m: m[0] == "got") == ("got", "sent")
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: m == ("got", "never sent"))


@pytest.mark.parametrize("call", [
    lambda bad: otpy.receive(timeout=bad),
    lambda bad: otpy.send(otpy.self(), "x", timeout=bad),
    lambda bad: otpy.send_after(otpy.self(), "x", bad),
    lambda bad: Echo.start(timeout=bad),
    lambda bad: lowlevel.await_down(otpy.make_ref(), bad),
    lambda bad: wait_for(lambda: True, bad),
    lambda bad: wait_down(otpy.self(), bad),
    lambda bad: synchronize({"a": lambda: 1}, timeout=bad),
    lambda bad: isolated_tree("t", stop_timeout=bad),
], ids=["receive", "send", "send_after", "start", "await_down", "wait_for", "wait_down",
        "synchronize", "isolated_tree"])
def test_nan_is_refused_everywhere(call):
    before = set(otpy.processes())
    with pytest.raises(ValueError, match="timeout|delay"):
        call(math.nan)
    assert set(otpy.processes()) == before  # nothing started


def test_send_after_needs_a_finite_delay():
    with pytest.raises(ValueError, match="send_after delay must be a finite"):
        otpy.send_after(otpy.self(), "x", math.inf)


def test_the_testing_helpers_take_inf():
    assert wait_for(lambda: 7, timeout=math.inf) == 7
    pid = otpy.spawn(lambda: None)
    assert wait_down(pid, timeout=math.inf) in ("normal", "noproc")
    assert synchronize({"a": lambda: 1, "b": lambda: 2}, timeout=math.inf) == {"a": 1, "b": 2}
    assert synchronize({"a": lambda: 1}, timeout=None, in_processes=False) == {"a": 1}
    with isolated_tree("inner", stop_timeout=math.inf) as tree:
        assert otpy.is_alive(tree.supervisor)
    assert tree.supervisor is not None and not otpy.is_alive(tree.supervisor)


def test_a_refused_timeout_leaves_no_monitor_behind():
    with pytest.raises(ValueError):
        wait_down(otpy.self(), math.nan)
    assert otpy.process_info(otpy.self())["monitors"] == []
