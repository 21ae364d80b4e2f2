"""otpy.acall and otpy.areceive: the same semantics as call and receive,
with the task waiting instead of the thread (issue 26, callers)."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

import otpy
from otpy import lowlevel
from otpy._runtime.node import context  # internals: no waiter is left behind

import helpers
from helpers import DEADLINE


class Echo(otpy.GenServer):
    def init(self, log=None):
        self.log = log
        self.held = []

    def handle_call(self, request, caller):
        if request == "hold":  # answered only when told to
            self.held.append(caller)
            if self.log is not None:
                otpy.send(self.log, ("holding", len(self.held)))
            return otpy.NOREPLY
        if request == "release":
            for held in self.held:
                otpy.reply(held, "released")
            self.held.clear()
            return "ok"
        if request == "die":
            raise RuntimeError("asked to die")
        return request


def serve(cls=Echo, *args, **spec):
    return helpers.CURRENT_TREE.start_child(cls.child_spec(*args, **spec))


def run(coroutine, timeout=DEADLINE):
    """Run a coroutine on a fresh loop, bounded."""
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout)
    return asyncio.run(bounded())


def test_acall_returns_the_reply():
    pid = serve()
    assert run(otpy.acall(pid, ("x", 1))) == ("x", 1)
    assert run(otpy.acall(pid, "y", timeout=math.inf)) == "y"


def test_acall_of_a_dead_or_unknown_server_is_noproc_at_once():
    with pytest.raises(otpy.NoProc):
        run(otpy.acall("no_such_server", "x"))
    pid = otpy.spawn(lambda: None)
    helpers.wait_gone([pid.os_pid])
    with pytest.raises(otpy.NoProc):
        run(otpy.acall(pid, "x"))


def test_acall_raises_the_servers_exit_reason_if_it_dies_first():
    pid = serve(restart="temporary")
    with pytest.raises(otpy.Exited) as info:
        run(otpy.acall(pid, "die"))
    assert isinstance(info.value.reason, RuntimeError)


def test_acall_timeout_drops_the_late_reply():
    pid = serve(Echo, otpy.self())
    with pytest.raises(otpy.Timeout):
        run(otpy.acall(pid, "hold", timeout=0.2))
    assert otpy.call(pid, "release") == "ok"
    assert otpy.call(pid, "after") == "after"
    with pytest.raises(otpy.Timeout):  # the late "released" never shows up
        otpy.receive(timeout=0, match=lambda m: type(m) is tuple and m[0] == "$reply")


def test_a_cancelled_acall_gives_up_and_drops_the_reply():
    pid = serve(Echo, otpy.self())

    async def cancel_while_held():
        task = asyncio.ensure_future(otpy.acall(pid, "hold"))
        await otpy.areceive(timeout=DEADLINE, match=lambda m: m == ("holding", 1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_while_held())
    ctx = context()
    assert not ctx.tasks and not ctx.keyed_tasks  # no waiter left behind
    assert otpy.call(pid, "release") == "ok"
    assert otpy.call(pid, "z") == "z"
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: type(m) is tuple and m[0] == "$reply")
    assert not ctx.awaiting


def _take_all(match):
    """Every queued message ``match`` accepts, taken out of the mailbox."""
    taken = []
    while True:
        try:
            taken.append(otpy.receive(timeout=0, match=match))
        except otpy.Timeout:
            return taken


def _holding(m):
    return type(m) is tuple and m[:1] == ("holding",)


def test_cancelled_acalls_among_many_waiting_leave_nothing_behind():
    pid = serve(Echo, otpy.self())

    async def cancel_half():
        calls = [asyncio.ensure_future(otpy.acall(pid, "hold")) for _ in range(200)]
        await otpy.areceive(timeout=DEADLINE, match=lambda m: m == ("holding", 200))
        for task in calls[::2]:
            task.cancel()
        assert await otpy.acall(pid, "release") == "ok"
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(cancel_half())
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert results[1::2] == ["released"] * 100
    ctx = context()
    assert not ctx.tasks and not ctx.keyed_tasks and not ctx.awaiting
    assert len(_take_all(_holding)) == 199  # (the 200th was taken by the areceive)
    assert otpy.call(pid, "after") == "after"  # the cancelled calls' replies were dropped:
    assert not _take_all(lambda m: type(m) is tuple and m[0] == "$reply")


def test_an_areceive_and_acalls_waiting_in_one_loop_are_each_woken():
    """A message wakes a waiting receive while calls wait in the same loop
    (a call's task is woken by its reply only)."""
    me = otpy.self()
    pid = serve(Echo, me)

    async def both():
        calls = [asyncio.ensure_future(otpy.acall(pid, "hold")) for _ in range(50)]
        await otpy.areceive(timeout=DEADLINE, match=lambda m: m == ("holding", 50))
        otpy.send_after(me, "ping", 0.01)
        assert await otpy.areceive(timeout=DEADLINE, match=lambda m: m == "ping") == "ping"
        assert not any(task.done() for task in calls)
        assert await otpy.acall(pid, "release") == "ok"
        return await asyncio.gather(*calls)

    assert run(both()) == ["released"] * 50
    _take_all(_holding)
    ctx = context()
    assert not ctx.tasks and not ctx.keyed_tasks and not ctx.awaiting


def test_an_areceive_woken_by_messages_it_does_not_match_still_times_out():
    """Each message that comes wakes a waiting receive; one it does not match
    sends it round again, and its deadline still ends it, whatever round."""
    me = otpy.self()

    async def noisy():
        for i in range(5):
            otpy.send_after(me, ("noise", i), 0.02 * (i + 1))
        with pytest.raises(otpy.Timeout):
            await otpy.areceive(timeout=0.3, match=lambda m: m == "never")

    run(noisy())
    noise = _take_all(lambda m: type(m) is tuple and m[:1] == ("noise",))
    assert sorted(noise) == [("noise", i) for i in range(5)]
    assert not context().tasks


def test_bad_timeouts_are_refused_before_sending():
    pid = serve()
    for bad, error in ((math.nan, ValueError), (-1, ValueError), (True, TypeError)):
        with pytest.raises(error, match="acall timeout"):
            run(otpy.acall(pid, "x", timeout=bad))


def test_ten_thousand_concurrent_acalls_use_no_thread():
    pid = serve()
    before = threading.active_count()

    async def many():
        return await asyncio.gather(*(otpy.acall(pid, i) for i in range(10_000)))

    assert run(many(), timeout=60) == list(range(10_000))
    assert threading.active_count() == before


def test_areceive_waits_for_a_matching_message_and_times_out():
    me = otpy.self()

    async def later():
        otpy.send_after(me, ("late", 1), 0.05)
        first = await otpy.areceive(timeout=DEADLINE, match=lambda m: m[0] == "late")
        with pytest.raises(otpy.Timeout):
            await otpy.areceive(timeout=0.05, match=lambda m: m == "never")
        return first

    assert run(later()) == ("late", 1)


def test_sync_and_async_callers_mix_in_one_process():
    pid = serve()
    results = {}

    def sync_caller():
        results["sync"] = [otpy.call(pid, ("s", i)) for i in range(300)]

    async def async_callers():
        return await asyncio.gather(*(otpy.acall(pid, ("a", i)) for i in range(300)))

    thread = threading.Thread(target=sync_caller)
    thread.start()
    results["async"] = run(async_callers(), timeout=60)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert results["sync"] == [("s", i) for i in range(300)]
    assert results["async"] == [("a", i) for i in range(300)]


def test_a_loop_in_another_thread_can_acall():
    pid = serve()
    out = {}

    def in_thread():
        out["value"] = asyncio.run(otpy.acall(pid, "from a thread", timeout=DEADLINE))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(DEADLINE)
    assert out == {"value": "from a thread"}


def test_acall_works_on_uvloop():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is in the test extra")
    pid = serve()

    async def calls():
        return await asyncio.gather(*(otpy.acall(pid, i, timeout=DEADLINE) for i in range(500)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(calls()) == list(range(500))


def test_arequest_is_the_building_block():
    pid = serve()
    me = otpy.self()
    ref = otpy.make_ref()
    assert run(lowlevel.arequest(pid, (lowlevel.CALL, (me, ref), "r"), ref, None)) == "r"


def test_asend_delivers_and_refuses_a_bad_timeout_before_sending():
    me = otpy.self()
    run(lowlevel.asend(me, ("asent", 1)))
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[:1] == ("asent",)) == ("asent", 1)
    with pytest.raises(ValueError, match="send timeout"):
        run(lowlevel.asend(me, ("asent", 2), timeout=-1))
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: m[:1] == ("asent",))


class _EarlyTimers(asyncio.SelectorEventLoop):
    """A loop whose timers fire early, as uvloop's can (its clock counts
    milliseconds, cached per iteration)."""

    def call_later(self, delay, callback, *args, context=None):
        return super().call_later(delay / 2, callback, *args, context=context)


def _never_answer() -> None:
    otpy.receive(match=lambda m: False)


def test_a_call_times_out_even_when_its_loop_fires_the_timer_early():
    """The wait goes round until the deadline has passed by our clock: an
    early timer that ended only a round is set again, not lost."""
    pid = otpy.spawn(_never_answer)
    ref = otpy.make_ref()
    loop = _EarlyTimers()

    async def request():
        with pytest.raises(otpy.Timeout):
            await lowlevel.arequest(pid, (lowlevel.CALL, (otpy.self(), ref), "q"), ref, 0.2)

    try:
        # (the bound: this loop's timers fire at half time, so DEADLINE * 2)
        loop.run_until_complete(asyncio.wait_for(request(), 2 * DEADLINE))
    finally:
        loop.close()
        helpers.kill_and_wait([pid])
