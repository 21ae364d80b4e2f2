"""The zygote never blocks on a process's full inbound stream, a descriptor
hand-over included; a zygote reply that comes after its request timed out, or
was interrupted, is dropped, not kept. Tests of the runtime's internals."""

from __future__ import annotations

import os
import signal
import socket
import types

import pytest

import otpy
from otpy._runtime.node import context
from otpy._runtime.zygote import Zygote


def test_handing_over_a_descriptor_to_a_full_stream_does_not_block():
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        here.setblocking(False)
        while True:  # fill the stream nobody reads
            try:
                here.send(b"x" * 4096)
            except BlockingIOError:
                break
        here.setblocking(True)  # as the zygote's write ends are
        entry = types.SimpleNamespace(write=here)
        zygote = types.SimpleNamespace(held={w}, _drop=lambda fd: None)
        # with socket.send_fds (which drops MSG_DONTWAIT) this blocked forever
        assert Zygote._try_send(zygote, entry, b"reply", w) is False
    finally:
        for s in (here, there):
            s.close()
        os.close(r)
        os.close(w)


def test_a_zygote_reply_after_its_request_timed_out_is_dropped():
    ctx = context()
    os.kill(ctx.zygote_os_pid, signal.SIGSTOP)  # it cannot answer in time
    try:
        with pytest.raises(otpy.Timeout, match="'processes'"):
            ctx.request("processes", None, timeout=0.01)
    finally:
        os.kill(ctx.zygote_os_pid, signal.SIGCONT)
    assert otpy.processes()  # a later request: its reply comes after the late one
    assert ctx.replies == {} and ctx.abandoned_requests == set()


def test_a_zygote_reply_after_its_request_was_interrupted_is_dropped():
    ctx = context()
    with ctx.lock:  # as a fatal exit signal read while the request waited
        ctx.fatal = otpy.ProcessExit("fatal")
    with pytest.raises(otpy.ProcessExit):
        ctx.request("processes", None)
    assert otpy.processes()  # a later request: its reply comes after the dropped one
    assert ctx.replies == {} and ctx.abandoned_requests == set()
