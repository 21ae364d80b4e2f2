"""One thread at a time reads a process's stream (the reader role): what
another thread of the process does must wake it when it concerns it. Tests
of the runtime's internals."""

from __future__ import annotations

import os
import signal
import sys
import threading

import otpy
from otpy._runtime.node import context

import helpers
from helpers import expect


def _sent_to_itself_by_its_thread(parent: otpy.Pid) -> None:
    ctx = context()
    me = otpy.self()

    def send_once_reading() -> None:
        while not ctx.reading:  # the main thread holds the reader role: spinning or blocked
            os.sched_yield()
        otpy.send(me, "from my thread")

    threading.Thread(target=send_once_reading, daemon=True).start()
    otpy.send(parent, ("got", otpy.receive()))  # no deadline: the test's is the limit


def test_a_message_a_thread_sends_its_own_process_wakes_the_thread_reading():
    """A message to itself is filed at once, unless another thread reads the
    stream: that one wakes only for a frame. (A pool's server is woken this
    way when a claim one of its threads waits for ends.)"""
    pid = otpy.spawn(_sent_to_itself_by_its_thread, otpy.self())
    try:
        assert expect(lambda m: m[0] == "got") == ("got", "from my thread")
    finally:
        helpers.kill_and_wait([pid])


def _sends_to_itself_in_order(parent: otpy.Pid, count: int) -> None:
    """A thread sends 0..count-1 to its own process while the main thread
    receives them (thread switches forced often): they arrive in order."""
    sys.setswitchinterval(1e-6)
    me = otpy.self()
    threading.Thread(target=lambda: [otpy.send(me, i) for i in range(count)],
                     daemon=True).start()
    got = [otpy.receive() for _ in range(count)]
    otpy.send(parent, ("got", got == list(range(count))))


def test_messages_a_process_sends_itself_from_a_thread_keep_their_order():
    pid = otpy.spawn(_sends_to_itself_in_order, otpy.self(), 20000)
    try:
        assert expect(lambda m: m[0] == "got", timeout=3 * helpers.DEADLINE) == ("got", True)
    finally:
        helpers.kill_and_wait([pid])


def _sends_itself_while_another_thread_reads(parent: otpy.Pid) -> None:
    ctx = context()
    me = otpy.self()
    reader = threading.Thread(target=otpy.receive, kwargs={"match": lambda m: m == "end"})
    reader.start()
    while not ctx.reading:
        os.sched_yield()
    otpy.send(me, "x")
    try:
        got = otpy.receive(timeout=0, match=lambda m: m == "x")
    except otpy.Timeout:
        got = "nothing"
    otpy.send(me, "end")
    reader.join()
    otpy.send(parent, ("got", got))


def test_a_message_a_process_sends_itself_is_in_its_mailbox_at_once():
    """Even while another of its threads is blocked reading its stream."""
    pid = otpy.spawn(_sends_itself_while_another_thread_reads, otpy.self())
    try:
        assert expect(lambda m: m[0] == "got") == ("got", "x")
    finally:
        helpers.kill_and_wait([pid])


def _sends_itself_from_a_signal_handler(parent: otpy.Pid) -> None:
    me = otpy.self()
    sent = []
    signal.signal(signal.SIGALRM, lambda *_: sent.append(otpy.send(me, "from the handler")))
    signal.setitimer(signal.ITIMER_REAL, 0.01)  # fires during the receive, or before it
    try:
        got = otpy.receive(timeout=0.5)  # the handler's message, by this deadline at the latest
    except otpy.Timeout:
        got = "nothing"
    otpy.send(parent, ("got", got, sent))


def test_a_signal_handler_of_the_reading_thread_sends_its_process_a_message():
    """The handler runs in the thread blocked reading: its send files the
    message and returns (it must not ask the zygote for a stream to itself,
    whose answer that very thread would have to read)."""
    pid = otpy.spawn(_sends_itself_from_a_signal_handler, otpy.self())
    try:
        assert expect(lambda m: m[0] == "got") == ("got", "from the handler", [None])
    finally:
        helpers.kill_and_wait([pid])
