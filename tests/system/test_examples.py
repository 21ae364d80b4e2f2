"""The README's demo: an application tree that crashes and recovers, then
stops cleanly and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

import psutil

from helpers import ROOT


def test_demo_runs_for_a_bounded_time_and_leaves_no_process():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--duration", "3",
                          "--crash-every", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    node = re.search(r"node (\w+) is running", out.stdout).group(1)
    assert f"-m otpy.observer {node}" in out.stdout
    assert re.search(r"round 1: 16 processes", out.stdout)
    # the notebook pool's session survived its worker's SIGKILL by replay
    assert re.search(r"chaos: SIGKILL alice's worker", out.stdout)
    assert re.search(r"alice still remembers 2 facts, replayed on .*recovered sessions: 1",
                     out.stdout)
    assert "stopped cleanly; processes left: [<Pid 1 " in out.stdout
    # the flaky worker crashed and came back: a crash report with its traceback
    assert "crash report" in out.stderr and "child_id=flaky" in out.stderr
    assert 'raise RuntimeError("flaky crashed on purpose")' in out.stderr
    assert re.search(r"child restarted .*child_id=flaky", out.stderr)
    strays = [p for p in psutil.process_iter(["name"]) if p.info["name"] == f"otpy-{node}"]
    assert strays == []
