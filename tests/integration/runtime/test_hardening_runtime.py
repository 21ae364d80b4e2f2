"""Runtime hardening, in the test's own node: nothing waits forever on a full
receiver or an undecodable request, a call's wait does not depend on the
unrelated messages queued, many threads share one process's stream."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import threading

import pytest

import otpy
from otpy import lowlevel
from otpy.testing import wait_for

import helpers
from helpers import DEADLINE

RUNTIME = os.path.join(os.path.dirname(otpy.__file__), "_runtime")


class Echo(otpy.GenServer):
    def handle_call(self, request, caller):
        return request


class Generator(otpy.GenServer):
    def handle_call(self, request, caller):
        return ("ok", (x for x in range(3)))


def _refuse():
    raise ValueError("this object refuses to be rebuilt")


class Refuses:
    """Pickles fine, fails to unpickle anywhere."""

    def __reduce__(self):
        return (_refuse, ())


def serve(cls, **spec):
    """Start a server under the test's tree (so the tree stops it)."""
    return helpers.CURRENT_TREE.start_child(cls.child_spec(**spec))


def in_thread(fn, timeout=DEADLINE):
    """Run ``fn`` in a thread; its result or exception, or fail if it hangs."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} still blocked after {timeout}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- 1. a request the server cannot decode is answered ----------------------------

def test_a_call_the_server_cannot_decode_raises_naming_what_failed():
    pid = serve(Echo)
    with pytest.raises(otpy.SerializationError, match="could not decode the request.*_refuse"):
        in_thread(lambda: otpy.call(pid, ("store", Refuses()), timeout=None))
    assert otpy.call(pid, "still serving") == "still serving"


def test_a_supervisor_operation_with_an_undecodable_spec_fails_instead_of_hanging():
    sup = helpers.CURRENT_TREE.start_child(otpy.Supervisor.child_spec([], id="sup"))
    spec = otpy.ChildSpec("w", otpy.spawn_link, args=(Refuses(),))
    with pytest.raises(otpy.SerializationError, match="ValueError.*refuses to be rebuilt"):
        in_thread(lambda: otpy.Supervisor.start_child(sup, spec))
    assert otpy.Supervisor.which_children(sup) == []


def test_salvage_names_the_missing_parts_of_a_bad_message():
    me = otpy.self()
    otpy.send(me, ("tag", [1, Refuses(), 3]))
    bad = otpy.receive(timeout=DEADLINE)
    assert isinstance(bad, otpy.BadMessage)
    term, problems = lowlevel.salvage(bad)
    assert term[0] == "tag" and term[1][0] == 1 and term[1][2] == 3
    assert isinstance(term[1][1], lowlevel.Undecodable)
    assert "refuses to be rebuilt" in problems[0]


# ---- 2. a full receiver: every send has a deadline ----------------------------------

def stuck(report_to):
    """Never reads its inbound stream."""
    otpy.send(report_to, "stuck")
    threading.Event().wait()


def fill(pid):
    """Send 32 KiB frames until the receiver's buffer is full."""
    chunk = b"x" * (32 * 1024 - 64)
    sent = 0
    while True:
        try:
            otpy.send(pid, chunk, timeout=0.2)
        except otpy.Timeout as exc:
            return sent, exc
        sent += 1
        assert sent < 10_000, "the receiver's buffer never filled"


def test_a_call_to_a_full_receiver_honours_its_timeout():
    me = otpy.self()
    pid = helpers.CURRENT_TREE.start_child(
        otpy.ChildSpec("stuck", otpy.spawn_link, args=(stuck, me), shutdown="brutal_kill"))
    otpy.receive(timeout=DEADLINE, match=lambda m: m == "stuck")
    sent, exc = fill(pid)
    assert sent > 0 and "inbound buffer is full" in str(exc)
    unread = otpy.process_info(pid)["inbound_bytes"]
    with pytest.raises(otpy.Timeout, match="while sending"):
        in_thread(lambda: otpy.call(pid, "ping", timeout=0.5))
    with pytest.raises(otpy.Timeout, match="Nothing was sent"):
        in_thread(lambda: otpy.send(pid, b"z" * (1 << 20), timeout=0.2))  # a memfd frame
    # nothing of the call or the big send was written
    assert otpy.process_info(pid)["inbound_bytes"] == unread


def held_until_signalled(report_to):
    """Reads nothing until it gets SIGUSR1, then everything."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    otpy.send(report_to, "held")
    signal.sigwait({signal.SIGUSR1})
    while True:
        otpy.receive()


def held_receiver():
    me = otpy.self()
    pid = helpers.CURRENT_TREE.start_child(otpy.ChildSpec(
        "held", otpy.spawn_link, args=(held_until_signalled, me), shutdown="brutal_kill"))
    otpy.receive(timeout=DEADLINE, match=lambda m: m == "held")
    return pid


BIG = b"x" * 10_000_000  # over the 8 MiB a receiver may leave unread


def test_big_messages_count_against_what_a_receiver_may_leave_unread():
    # A big body travels in a memfd, outside the stream's buffer: it used to
    # count 5 bytes, and a sender piled gigabytes on a receiver not reading.
    pid = held_receiver()
    otpy.send(pid, BIG, timeout=0.2)  # nothing unread: a body over the bound goes
    with pytest.raises(otpy.Timeout, match=r"full \((\d{8,}) bytes unread\).*Nothing was sent"):
        otpy.send(pid, BIG, timeout=0.2)
    with pytest.raises(otpy.Timeout, match="Nothing was sent"):
        otpy.send(pid, b"y" * 40_000, timeout=0.2)  # a small big one too
    os.kill(pid.os_pid, signal.SIGUSR1)  # it reads: the sender is woken, not left to time out
    otpy.send(pid, BIG, timeout=DEADLINE)
    otpy.send(pid, BIG, timeout=DEADLINE)


def send_big_until_full(pid, report_to):
    """Another sender: how many 40 kB messages it sends before a Timeout."""
    sent = 0
    try:
        while sent < 1000:
            otpy.send(pid, b"y" * 40_000, timeout=0.1)
            sent += 1
    except otpy.Timeout:
        pass
    otpy.send(report_to, ("sent", sent))


def test_a_sender_holds_two_descriptors_for_a_receiver_and_counts_its_own_frames():
    # each frame once kept a descriptor of its own in the sender (and one more
    # in flight) until the next big send to that receiver: a fan-out to
    # receivers that do not read ran out of descriptors before any Timeout
    pid = held_receiver()
    before = len(os.listdir("/proc/self/fd"))
    sent = 0
    with pytest.raises(otpy.Timeout):
        while sent < 1000:
            otpy.send(pid, b"y" * 40_000, timeout=0.1)
            sent += 1
    assert sent <= 64  # by number, well before 8 MiB of 40 kB ones (209)
    assert len(os.listdir("/proc/self/fd")) - before <= 3  # the stream, and the two ends
    # the bound is per sender: another one has its own
    otpy.spawn(send_big_until_full, pid, otpy.self())
    assert otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "sent") == ("sent", sent)


@pytest.mark.parametrize("sender", ["thread", "task"])
def test_a_sender_waiting_for_a_receiver_to_read_is_woken_by_its_death(sender):
    pid = held_receiver()
    otpy.send(pid, BIG, timeout=0.2)
    done = []

    native = []

    def send():
        native.append(threading.get_native_id())
        if sender == "thread":
            done.append(otpy.send(pid, BIG, timeout=None))
        else:
            done.append(asyncio.run(lowlevel.asend(pid, BIG, timeout=None)))

    sending = threading.Thread(target=send)
    sending.start()
    def waits_in_poll():
        with open(f"/proc/self/task/{native[0]}/wchan") as f:
            return "poll" in f.read()

    try:
        wait_for(lambda: native and waits_in_poll(), timeout=DEADLINE)
        os.kill(pid.os_pid, signal.SIGKILL)
    finally:
        sending.join(DEADLINE)
    assert done == [None]  # dropped, as any message to a dead process


@pytest.mark.parametrize("size", ["small", "big"])
def test_tasks_of_one_loop_waiting_to_send_to_one_receiver_are_each_woken(size):
    # (each watches its own copy of the descriptor: a loop keeps one callback
    # per descriptor, so the last task's watch replaced the others')
    pid = held_receiver()
    if size == "big":
        otpy.send(pid, BIG, timeout=0.2)
        message = BIG
    else:
        fill(pid)
        message = b"x" * 1000

    async def senders():
        tasks = [asyncio.create_task(lowlevel.asend(pid, message, timeout=DEADLINE))
                 for _ in range(3)]
        await asyncio.sleep(0)  # each has run up to its wait for room
        assert not any(task.done() for task in tasks)
        os.kill(pid.os_pid, signal.SIGUSR1)
        return await asyncio.gather(*tasks)

    assert asyncio.run(senders()) == [None, None, None]


def test_send_rejects_a_bad_timeout():
    with pytest.raises(ValueError, match="send timeout"):
        otpy.send(otpy.self(), "x", timeout=-1)


# ---- 7. a call's wait does not scan unrelated queued messages -------------------------

class Counting:
    """Counts how often anything compares it with something."""

    compared = 0

    def __eq__(self, other):
        type(self).compared += 1
        return False

    __hash__ = object.__hash__


def test_a_call_does_not_rescan_unrelated_queued_messages():
    pid = serve(Echo)
    me = otpy.self()
    for i in range(500):  # stale replies of someone else's calls, and plain messages
        otpy.send(me, ("$reply", Counting(), i))
        otpy.send(me, ("unrelated", i))
    Counting.compared = 0
    for i in range(20):
        assert otpy.call(pid, i) == i
    assert Counting.compared == 0
    # the queued messages are all still there, in order
    got = [otpy.receive(timeout=0) for _ in range(1000)]
    assert [m[2] if m[0] == "$reply" else m[1] for m in got] == [i for i in range(500)
                                                                   for _ in (0, 1)]


def test_twenty_thousand_queued_messages_do_not_disturb_a_call():
    pid = serve(Echo)
    me = otpy.self()
    for i in range(20_000):
        otpy.send(me, ("unrelated", i))
    for i in range(50):
        assert otpy.call(pid, ("n", i)) == ("n", i)
    assert lowlevel.flush(lambda m: m[0] == "unrelated") == 20_000


# ---- 8. threads ---------------------------------------------------------------------

def test_sixteen_threads_calling_one_server_each_get_their_own_replies():
    pid = serve(Echo)
    results = {}

    def work(n):
        results[n] = [otpy.call(pid, (n, i)) for i in range(200)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert results == {n: [(n, i) for i in range(200)] for n in range(16)}


def test_a_receiving_thread_and_calling_threads_share_the_stream():
    pid = serve(Echo)
    me = otpy.self()
    got = []
    receiver = threading.Thread(
        target=lambda: got.extend(otpy.receive(timeout=DEADLINE, match=lambda m: m[0] == "mail")
                                  for _ in range(100)))
    receiver.start()
    callers = [threading.Thread(target=lambda n=n: [otpy.call(pid, n) for _ in range(100)])
               for n in range(4)]
    for t in callers:
        t.start()
    for i in range(100):
        otpy.send(me, ("mail", i))
    for t in callers + [receiver]:
        t.join(60)
    assert got == [("mail", i) for i in range(100)]


# ---- 9. smaller -----------------------------------------------------------------------

def test_a_reply_that_cannot_be_pickled_names_the_value_type():
    pid = serve(Generator, restart="temporary")
    with pytest.raises(otpy.Exited) as info:
        otpy.call(pid, "give")
    text = str(info.value.reason)
    assert "generator" in text and "builtins.tuple" not in text


def test_the_process_module_does_not_import_the_logger():
    with open(os.path.join(RUNTIME, "process.py")) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.update(alias.name for alias in node.names)
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "log" not in imported and not any(name.endswith(".log") for name in imported)
