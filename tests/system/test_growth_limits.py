"""System limits: a node uses what it may, and says which limit stopped it.

Each case runs a program in a subprocess under a lowered limit, so the test
run itself keeps its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from helpers import TESTS, wait_gone

PROGRAM = textwrap.dedent("""
    import json, resource, otpy

    def idle():
        otpy.receive()

    otpy.self()  # start the node
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pids, error = [], None
    for _ in range(int(__import__("sys").argv[1])):
        try:
            pids.append(otpy.spawn(idle))
        except otpy.OtpyError as exc:
            error = str(exc)
            break
    # the node still works after refusing a spawn
    alive = sum(otpy.is_alive(p) for p in pids)
    print(json.dumps({"soft": soft, "hard": hard, "spawned": len(pids), "alive": alive,
                      "error": error}), flush=True)
""")


def run(limit_processes: int, preexec) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(limit_processes)],
                          preexec_fn=preexec, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_at_node_start():
    def lower_soft():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    result = run(100, lower_soft)
    assert (result["soft"], result["hard"]) == (4096, 4096)
    assert result["spawned"] == result["alive"] == 100 and result["error"] is None


def test_hitting_the_open_file_limit_names_it_and_how_to_raise_it():
    def lower_hard():
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    result = run(200, lower_hard)
    assert 0 < result["spawned"] < 200 and result["alive"] == result["spawned"]
    error = result["error"]
    assert "open-file limit" in error and "RLIMIT_NOFILE" in error, error
    assert "hard=96" in error and "ulimit -n" in error, error


CGROUP_ROOT = "/sys/fs/cgroup/pids"


def _pids_cgroup(limit: int) -> str | None:
    """A pids cgroup of our own (cgroup v1 here), or None where we may not make one."""
    path = os.path.join(CGROUP_ROOT, f"otpy-test-{os.getpid()}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(limit))
    except OSError:
        if os.path.isdir(path):
            os.rmdir(path)
        return None
    return path


@contextlib.contextmanager
def _limited_to_20_processes():
    """A preexec function that puts a subprocess in a pids cgroup of 20
    (RLIMIT_NPROC does not bind root); the cgroup is gone after the block."""
    cgroup = _pids_cgroup(20)
    if cgroup is None:
        pytest.skip("no writable pids cgroup here (needs root and cgroup v1 pids)")

    def join():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    try:
        yield join
    finally:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            wait_gone(int(line) for line in f.read().split())  # a node still exiting
        os.rmdir(cgroup)


def test_hitting_the_process_limit_names_it():
    with _limited_to_20_processes() as join:
        result = run(100, join)
    assert 0 < result["spawned"] < 20 and result["alive"] == result["spawned"]
    error = result["error"]
    assert "process limit" in error and "pids.max=20" in error, error
    assert "RLIMIT_NPROC" in error and "ulimit -u" in error, error


SPARE_AT_THE_LIMIT = textwrap.dedent("""
    import json, sys, otpy
    sys.path.insert(0, sys.argv[1])
    from helpers import spare_os_pid

    def idle(padding=b""):
        otpy.receive()

    pids = []
    while True:  # up to the limit (each spawn handed the spare, if there was one)
        try:
            pids.append(otpy.spawn(idle))
        except otpy.OtpyError:
            break
    for victim in pids[-2:]:  # two slots free...
        ref = otpy.monitor(victim)
        otpy.exit(victim, "kill")
        otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
    otpy.spawn(idle)  # ...one taken by a spawn, the other by the spare forked after it
    spare_os_pid()
    try:  # a body too big for the spare is forked: the spare gives up its slot
        otpy.spawn(idle, b"x" * (70 * 1024))
        outcome = "spawned"
    except otpy.OtpyError as exc:
        outcome = str(exc)
    print(json.dumps({"spawned": len(pids), "outcome": outcome}), flush=True)
""")


def test_at_the_process_limit_the_spare_gives_its_slot_to_a_fork():
    with _limited_to_20_processes() as join:
        proc = subprocess.run([sys.executable, "-c", SPARE_AT_THE_LIMIT, str(TESTS)],
                              preexec_fn=join, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 0 < result["spawned"] < 20 and result["outcome"] == "spawned", result
