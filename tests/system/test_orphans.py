"""No orphans: when the program ends, by any means, every otpy process is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from helpers import wait_gone

PROGRAM = textwrap.dedent("""
    import json, sys
    import otpy
    from otpy import lowlevel as node

    def busy():
        while True:
            pass

    def idle():
        otpy.receive()

    def parent_of_two():
        otpy.spawn_link(busy)
        otpy.spawn_link(idle)
        otpy.receive()

    pids = [otpy.spawn(busy) for _ in range(3)]
    pids += [otpy.spawn(idle) for _ in range(2)]
    pids.append(otpy.spawn(parent_of_two))
    # the grandchildren exist once parent_of_two is in receive; ask until they do
    while len(otpy.processes()) < 9:
        pass
    print(json.dumps({"zygote": node.zygote_os_pid(), "keeper": node.keeper_os_pid(),
                      "os_pids": [p.os_pid for p in otpy.processes() if p != otpy.self()]}),
          flush=True)
    mode = sys.argv[1]
    if mode == "hang":
        sys.stdin.read()
    elif mode == "raise":
        raise SystemExit("the program failed")
    elif mode == "os_exit":  # no atexit, no cleanup: only the watch pipe tells
        import os
        os._exit(3)
""")


def run_program(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, "the program did not start"
    info = json.loads(line)
    os_pids = info["os_pids"] + [info["zygote"], info["keeper"]]
    assert len(os_pids) == 10
    return proc, os_pids


def otpy_processes_of(os_pids: list[int]) -> list[int]:
    alive = []
    for os_pid in os_pids:
        try:
            if psutil.Process(os_pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(os_pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("death", ["sigkill", "os_exit"])
def test_hard_death_of_the_program_leaves_no_process_within_one_second(death):
    proc, os_pids = run_program("hang" if death == "sigkill" else "os_exit")
    try:
        if death == "sigkill":
            assert len(otpy_processes_of(os_pids)) == 10
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        survivors = wait_gone(os_pids, timeout=1.0)
        assert survivors == [], f"alive 1 s after the program was SIGKILLed: {survivors}"
    finally:
        for os_pid in otpy_processes_of(os_pids):
            os.kill(os_pid, signal.SIGKILL)
        proc.stdin.close()
        proc.stdout.close()


@pytest.mark.parametrize("mode", ["return", "raise"])
def test_program_exit_leaves_no_process(mode):
    proc, os_pids = run_program(mode)
    try:
        proc.wait(timeout=30)
        # shutdown reaps everything before the program's own exit completes
        assert otpy_processes_of(os_pids) == []
    finally:
        for os_pid in otpy_processes_of(os_pids):
            os.kill(os_pid, signal.SIGKILL)
        proc.stdin.close()
        proc.stdout.close()


def test_processes_are_tagged_with_their_node():
    proc, os_pids = run_program("hang")
    try:
        names = {psutil.Process(p).name() for p in os_pids}
        assert len(names) == 1 and names.pop().startswith("otpy-")
    finally:
        proc.kill()
        proc.wait()
        wait_gone(os_pids, timeout=5)
        proc.stdin.close()
        proc.stdout.close()
