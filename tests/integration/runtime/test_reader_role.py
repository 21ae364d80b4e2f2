"""One thread at a time reads a process's stream (the reader role): what
another thread of the process does must wake it when it concerns it. Tests
of the runtime's internals."""

from __future__ import annotations

import os
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
