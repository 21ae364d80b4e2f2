"""The zygote's spare (issue 25): a process forked ahead of need, which the
next spawn is handed instead of forking while the spawner waits. Tests of
the runtime's internals: which OS process a spawn became."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

import otpy
from otpy import lowlevel
from otpy._runtime import spare
from otpy.testing import wait_for

from helpers import DEADLINE, TESTS, expect, expect_down, sigkill, spare_os_pid, wait_gone


def _spawn_and_greet() -> otpy.Pid:
    """A process that says hello and ends; returns once it is gone."""
    pid, ref = otpy.spawn_monitor(otpy.send, otpy.self(), "hello")
    expect(lambda m: m == "hello")
    expect_down(ref)
    return pid


def test_a_spawn_is_handed_the_spare_forked_before_it():
    _spawn_and_greet()
    for _ in range(3):  # and again: each spawn's spare is forked after the last one
        waiting = spare_os_pid()
        assert _spawn_and_greet().os_pid == waiting


def test_the_sweep_after_a_death_leaves_the_spare_alone():
    _spawn_and_greet()
    pid, ref = otpy.spawn_monitor(otpy.receive)  # handed the spare; another is forked...
    sigkill(pid)
    expect_down(ref)  # ...and this death sweeps the zygote's children
    waiting = spare_os_pid()
    otpy.processes()  # answered after the sweep that followed the death
    assert psutil.Process(waiting).status() != psutil.STATUS_ZOMBIE
    assert _spawn_and_greet().os_pid == waiting


def test_a_killed_spare_is_reaped_at_once_and_replaced_after_the_next_spawn():
    _spawn_and_greet()
    waiting = spare_os_pid()
    os.kill(waiting, signal.SIGKILL)
    # reaped by the zygote (no zombie left for the next spawn to find); the
    # next spawn forks, and a spare is forked after it (not at once: a spare
    # that died as it started would be forked again and again)
    wait_for(lambda: not psutil.pid_exists(waiting), timeout=DEADLINE)
    assert _spawn_and_greet().os_pid != waiting
    replacement = spare_os_pid()
    assert _spawn_and_greet().os_pid == replacement


def test_a_body_too_big_for_the_spare_is_never_copied_to_be_measured():
    class Unpicklable(bytes):
        def __reduce__(self):
            raise AssertionError("a body too big for the spare was pickled")

    waiting = spare.Spare.__new__(spare.Spare)  # the sizes only: no process needed
    waiting.max_order = spare.MAX_ORDER
    assert waiting.order(None, "", None, None, 0, Unpicklable(spare.MAX_ORDER + 1)) is None


def test_a_body_too_big_for_the_spare_is_forked_and_the_spare_kept():
    _spawn_and_greet()
    waiting = spare_os_pid()
    big = b"x" * (spare.MAX_ORDER + 1)
    pid, ref = otpy.spawn_monitor(otpy.send, otpy.self(), ("big", big))
    assert expect(lambda m: type(m) is tuple and m[0] == "big") == ("big", big)
    expect_down(ref)
    assert pid.os_pid != waiting
    assert _spawn_and_greet().os_pid == waiting


LATE_LOGGING = textwrap.dedent("""
    import sys, otpy
    sys.path.insert(0, sys.argv[1])
    from helpers import spare_os_pid
    from servers import Counter

    pid, ref = otpy.spawn_monitor(otpy.send, otpy.self(), "hello")  # a spare follows
    otpy.receive(timeout=10, match=lambda m: m == "hello")
    spare_os_pid()
    otpy.configure_logging(json=True, file=sys.argv[2])
    sup = otpy.Supervisor.start_link([Counter.child_spec(name="c")])  # from a new spare
    ref = otpy.monitor("c")
    otpy.cast("c", "crash")
    otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
    otpy.Supervisor.which_children(sup)  # answered after its crash report
    otpy.Supervisor.stop(sup)
""")


def test_logging_configured_after_the_spare_was_forked_reaches_the_next_process(tmp_path):
    log = tmp_path / "log.jsonl"
    out = subprocess.run([sys.executable, "-c", LATE_LOGGING, str(TESTS), str(log)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with open(log) as f:
        events = [json.loads(line) for line in f]  # the supervisor's, as JSON lines
    assert any(e["event"] == "crash report" for e in events), (events, out.stderr)


ENDS_WITH_THE_NODE = textwrap.dedent("""
    import sys, otpy
    sys.path.insert(0, sys.argv[1])
    from helpers import spare_os_pid

    pid, ref = otpy.spawn_monitor(otpy.send, otpy.self(), "hello")
    otpy.receive(timeout=10, match=lambda m: m == "hello")
    print(spare_os_pid(), flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.read()
""")


def _program_with_a_spare(mode: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", ENDS_WITH_THE_NODE, str(TESTS), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_the_spare_ends_with_its_node():
    proc, waiting = _program_with_a_spare("exit")
    try:
        assert proc.wait(timeout=30) == 0
        assert not wait_gone([waiting])
    finally:
        proc.kill()
        proc.wait()


def test_the_spare_dies_with_a_killed_program():
    proc, waiting = _program_with_a_spare("wait")
    try:
        proc.kill()  # SIGKILL: no teardown runs; the zygote goes, and its spare with it
        proc.wait(timeout=30)
        assert not wait_gone([waiting])
    finally:
        proc.stdin.close()
        proc.stdout.close()


WAKE_AFTER_DEATH = textwrap.dedent("""
    import os, sys, otpy
    sys.path.insert(0, sys.argv[1])
    from helpers import spare_os_pid

    def wait_then_mark(path, padding):
        try:
            otpy.receive()
        finally:  # runs only if the process wakes after its program's death
            open(path, "w").close()

    forked = sys.argv[4] == "forked"
    padding = b"x" * (70 * 1024 if forked else 0)  # too big for a spare: forked
    for i in range(int(sys.argv[3])):
        spare_os_pid()  # each spawn (unless forked) handed a spare
        otpy.spawn(wait_then_mark, os.path.join(sys.argv[2], str(i)), padding)
    print(" ".join(str(p.os_pid) for p in otpy.processes() if p != otpy.self()), flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("made", ["from_spares", "forked"])
def test_processes_run_no_code_after_their_program_is_killed(tmp_path, made):
    # The zygote's exit closes its ends of every process's streams; a process
    # holding no other end would wake to an end of file and run its finally
    # before its parent-death signal came (and at 1,000 processes, keep the
    # zygote's exit busy for a second).
    proc = subprocess.Popen([sys.executable, "-c", WAKE_AFTER_DEATH, str(TESTS), str(tmp_path),
                             "40", made], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        os_pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(os_pids) == 40
        proc.kill()
        proc.wait(timeout=30)
        assert not wait_gone(os_pids)
        assert os.listdir(tmp_path) == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()



STDOUT_CLOSED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    closed = sys.argv[2] == "closed"
    if closed:
        os.close(1)  # as a program started with `>&-` (the node puts /dev/null there)
    import otpy
    from helpers import report_descriptors, spare_os_pid

    me = otpy.self()
    other = otpy.spawn(otpy.receive)  # a spare follows
    for made in ("from_spare", "forked"):
        waiting = spare_os_pid()
        padding = b"x" * (70 * 1024 if made == "forked" else 0)
        pid, ref = otpy.spawn_monitor(report_descriptors, me, padding, other, closed)
        report = otpy.receive(timeout=10, match=lambda m: type(m) is tuple and m[0] == "fds")
        otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
        print(made, pid.os_pid == waiting, *report[1:], file=sys.stderr, flush=True)
""")


@pytest.mark.parametrize("stdout", ["closed", "open"])
def test_a_process_gets_its_spawners_stream_above_stdio_and_closed_on_exec(stdout):
    out = subprocess.run([sys.executable, "-c", STDOUT_CLOSED, str(TESTS), stdout],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stderr.splitlines() if line.startswith(("from", "fork"))]
    # fd 1 stays what the process had (closed: a write to it fails, and is
    # neither the spawner's stream nor one the zygote handed over since), and a
    # program it execs inherits no socket of otpy's
    wrote = str(stdout == "open")
    assert lines == [["from_spare", "True", wrote, "0"], ["forked", "False", wrote, "0"]], \
        out.stderr


STALE_SPARE_EVENT = textwrap.dedent("""
    import os, signal, sys, otpy
    sys.path.insert(0, sys.argv[1])
    from otpy import lowlevel
    from otpy.testing import wait_for
    from helpers import spare_os_pid, wait_gone

    def spawner(parent):
        otpy.receive()
        otpy.send(parent, "spawning")
        otpy.send(parent, ("spawned", otpy.spawn(otpy.receive)))
        otpy.receive()

    me = otpy.self()
    asker = otpy.spawn(spawner, me)
    waiting = spare_os_pid()
    zygote = lowlevel.zygote_os_pid()

    def waits_for_its_reply():
        with open(f"/proc/{asker.os_pid}/wchan") as f:
            return any(w in f.read() for w in ("unix_stream", "poll", "select"))

    otpy.send(asker, "go")  # (opens our stream to it: before the zygote stops)
    os.kill(zygote, signal.SIGSTOP)
    otpy.receive(timeout=10, match=lambda m: m == "spawning")
    wait_for(waits_for_its_reply, timeout=10)  # its spawn request is read first...
    os.kill(waiting, signal.SIGKILL)  # ...then the spare's death, in the same batch
    assert not wait_gone([waiting])
    os.kill(zygote, signal.SIGCONT)
    otpy.receive(timeout=10, match=lambda m: type(m) is tuple and m[0] == "spawned")
    print(len(otpy.processes()), flush=True)  # the zygote still answers
""")


def test_a_spare_dying_beside_a_spawn_request_never_stalls_the_zygote():
    # The spawn finds the spare dead and forks; the new child's pidfd may take
    # the number the spare's had, whose death event is still in the batch.
    out = subprocess.run([sys.executable, "-c", STALE_SPARE_EVENT, str(TESTS)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3", out.stdout  # the program, the asker, its new process
