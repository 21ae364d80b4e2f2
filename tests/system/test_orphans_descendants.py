"""No orphans, one level down, when the program ends: what its otpy
processes started (subprocesses, forks, multiprocessing children, a
grandchild, one in a session of its own) is gone too, however the program
ends, SIGKILL included (issue 21, item 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import TESTS, wait_gone

PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import otpy
    import descendants

    def parent(report_to, busy):
        otpy.send(report_to, ("started", descendants.start()))
        if busy:
            while True:
                pass
        otpy.receive()

    me = otpy.self()
    parents = [otpy.spawn(parent, me, busy) for busy in (False, True)]
    os_pids = [p.os_pid for p in parents]
    for _ in parents:
        os_pids += otpy.receive(timeout=60, match=lambda m: m[0] == "started")[1]
    nodes = [otpy.lowlevel.zygote_os_pid(), otpy.lowlevel.keeper_os_pid()]
    print(json.dumps({"os_pids": os_pids, "node": nodes}), flush=True)
    mode = sys.argv[1]
    if mode == "hang":
        sys.stdin.read()
    elif mode == "raise":
        raise SystemExit("the program failed")
""")


@pytest.mark.parametrize("end", ["sigkill", "return", "raise", "zygote_sigkill"])
def test_nothing_an_otpy_process_started_outlives_the_program(end):
    """``zygote_sigkill``: the zygote itself is SIGKILLed (by hand, by the
    OOM killer) while the program lives: the node's keeper still ends every
    process and what each started."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM,
                             end if end in ("return", "raise") else "hang", str(TESTS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    os_pids: list[int] = []
    try:
        line = proc.stdout.readline()
        assert line, "the program did not start"
        report = json.loads(line)
        os_pids = report["os_pids"] + report["node"]
        assert wait_gone(os_pids, timeout=0) == sorted(os_pids)  # all running
        if end == "sigkill":
            proc.send_signal(signal.SIGKILL)
        elif end == "zygote_sigkill":
            os.kill(report["node"][0], signal.SIGKILL)
        if end != "zygote_sigkill":
            proc.wait(timeout=30)
        survivors = wait_gone(os_pids, timeout=1.0)
        assert survivors == [], f"alive 1 s after the program ended: {survivors}"
    finally:
        proc.kill()
        proc.wait()
        for os_pid in wait_gone(os_pids, timeout=0):
            subprocess.run(["kill", "-9", str(os_pid)], check=False)
        proc.stdin.close()
        proc.stdout.close()
