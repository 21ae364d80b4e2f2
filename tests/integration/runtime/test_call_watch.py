"""The runtime's call watch: how a caller learns that the process it waits on died.

GenServer calls build on it: a watch is asked once per (caller, callee) pair,
and the callee's death then arrives on the caller's stream behind anything
the callee sent, without a monitor round trip per call.
"""

from __future__ import annotations

import otpy
from otpy._runtime import node

from helpers import expect, expect_down, expect_exit, idle


def test_a_watched_process_death_reaches_the_watcher_with_its_reason():
    ctx = node.context()
    me = otpy.self()
    pid = otpy.spawn_link(lambda: (otpy.send(me, "last words"), otpy.receive(),
                                   otpy.exit(otpy.self(), "bye")))
    assert ctx.watch(pid) is None  # alive: watched from now on
    assert ctx.watch(pid) is None  # asked once; the second call is local
    otpy.send(pid, "go")
    expect(lambda m: m == "last words")
    # The zygote tells watchers, then links, then monitors: once the Exit is
    # here, the watch notice has been read too.
    expect_exit(pid)
    with ctx.cond:
        assert ctx.dead[pid.serial] == "bye"
        assert pid.serial not in ctx.watched


def test_watching_a_dead_process_returns_its_reason_at_once():
    ctx = node.context()
    pid, ref = otpy.spawn_monitor(idle)
    otpy.exit(pid, "gone")
    expect_down(ref)
    assert ctx.watch(pid) == "gone"
    assert ctx.watch(otpy.Pid("other-node", 5, 1)) == "noproc"


def test_a_first_call_to_a_process_is_one_request_to_the_zygote():
    from servers import Counter

    ctx = node.context()
    pid = Counter.start(5)
    requests_before = next(ctx.req_ids)
    assert otpy.call(pid, "get") == 5  # the watch, and the stream to it with it
    assert next(ctx.req_ids) - requests_before - 1 == 1
    assert pid.serial in ctx.out and pid.serial in ctx.watched
    assert otpy.call(pid, ("add", 1)) == 6  # and none after that
    assert next(ctx.req_ids) - requests_before - 2 == 1
    otpy.stop(pid)
