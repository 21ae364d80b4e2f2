"""Frames over a socket pair through the non-blocking calls, Python's and the
ones that keep the GIL (otpy._runtime.nowait), without processes: what is
there is read whole, with the descriptors passed alongside; nothing there, a
full buffer and a closed peer each have their answer, the same on both paths.

A test of the runtime's internals: it imports otpy._runtime.wire directly.
"""

from __future__ import annotations

import os
import socket

import pytest

from otpy._runtime import nowait, wire


both_paths = pytest.mark.parametrize("keep_gil", [False, True], ids=["python", "keep-gil"])


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@both_paths
def test_read_nowait_takes_what_is_there_and_says_none_when_nothing_is(pair, keep_gil):
    a, b = pair
    reader = wire.FrameReader()
    assert reader.read_nowait(b, keep_gil) is None
    kind, body = wire.encode(("hello", 1))
    assert wire.try_send_frame(a, kind, body, keep_gil)
    assert wire.try_send_frame(a, kind, body, keep_gil)
    assert reader.read_nowait(b, keep_gil) is True
    assert [wire.decode(k, f) for k, f in reader.frames()] == [("hello", 1), ("hello", 1)]
    assert reader.read_nowait(b, keep_gil) is None


@both_paths
def test_read_nowait_collects_descriptors_in_stream_order(pair, keep_gil):
    a, b = pair
    reader = wire.FrameReader()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        header = wire.HEADER.pack(0, wire.CTRL | wire.HAS_FD)
        socket.send_fds(a, [header], [r1])
        socket.send_fds(a, [header], [r2])
        got = []
        while len(got) < 2:
            assert reader.read_nowait(b, keep_gil) is True
            got += [fd for _kind, (fd, _body) in reader.frames()]
        # each received descriptor is the pipe's read end: what is written arrives there
        for fd, w in zip(got, (w1, w2)):
            os.write(w, b"x")
            assert os.read(fd, 1) == b"x"
            os.close(fd)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


@both_paths
def test_read_nowait_says_false_at_end_of_stream(pair, keep_gil):
    a, b = pair
    a.close()
    assert wire.FrameReader().read_nowait(b, keep_gil) is False


@both_paths
def test_a_frame_that_does_not_fit_is_not_sent_at_all(pair, keep_gil):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    kind, body = wire.encode(b"x" * 1000)
    sent = 0
    while wire.try_send_frame(a, kind, body, keep_gil):
        sent += 1
    assert nowait.send(a.fileno(), b"more") is None
    reader = wire.FrameReader()
    frames = []
    while reader.read_nowait(b, keep_gil):
        frames += reader.frames()
    assert len(frames) == sent  # whole frames only: the refused one left nothing behind
    assert all(wire.decode(k, f) == b"x" * 1000 for k, f in frames)


def test_sending_to_a_closed_peer_raises_broken_pipe(pair):
    a, b = pair
    b.close()
    with pytest.raises(BrokenPipeError):
        nowait.send(a.fileno(), b"lost")
