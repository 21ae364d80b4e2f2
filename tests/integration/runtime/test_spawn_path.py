"""What a spawned process is given at its fork, so that it does less before
and at the start of its body (issue 25), and what the zygote does before the
fork so that a child faster than it is still seen right. Tests of the
runtime's internals."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import otpy
from otpy._runtime import process

from helpers import expect, expect_down, spare_os_pid


def _requests_after_greeting(parent: otpy.Pid) -> None:
    otpy.send(parent, "hello")
    otpy.send(parent, ("requests made", next(process.current.req_ids) - 1))


def test_a_child_reaches_its_spawner_without_asking_the_zygote():
    pid, ref = otpy.spawn_monitor(_requests_after_greeting, otpy.self())
    assert expect(lambda m: m == "hello") == "hello"
    assert expect(lambda m: type(m) is tuple and m[0] == "requests made") == ("requests made", 0)
    expect_down(ref)


def _zygote_fds() -> int:
    spare_os_pid()  # its spare's four (pidfd, order socket, two stream ends), forked again
    otpy.processes()  # answered once the zygote has closed what it held for the dead
    return len(os.listdir(f"/proc/{process.current.zygote_os_pid}/fd"))


def test_the_zygote_keeps_no_copy_of_the_spawners_stream():
    otpy.spawn_monitor(otpy.send, otpy.self(), "warm")  # whatever a first spawn allocates
    expect(lambda m: m == "warm")
    expect(lambda m: isinstance(m, otpy.Down))
    before = _zygote_fds()
    for _ in range(20):
        _, ref = otpy.spawn_monitor(otpy.send, otpy.self(), "up")
        expect(lambda m: m == "up")
        expect_down(ref)
    assert _zygote_fds() == before


DAWDLING_ZYGOTE = textwrap.dedent("""
    import os, time, otpy
    from otpy.testing import wait_for

    # inherited by the zygote: after each fork it dawdles before its bookkeeping,
    # while the child goes on to wait in its receive
    os.register_at_fork(after_in_parent=lambda: time.sleep(0.2))
    pid = otpy.spawn(otpy.receive)
    wait_for(lambda: otpy.process_info(pid)["status"] == "waiting", timeout=5)
""")


def test_a_child_faster_than_the_zygote_is_still_seen_waiting():
    out = subprocess.run([sys.executable, "-c", DAWDLING_ZYGOTE], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
