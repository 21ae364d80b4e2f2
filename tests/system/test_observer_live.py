"""The live view, driven in a real pseudo-terminal against the running demo."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import psutil

from helpers import DEADLINE, ROOT, ctrl_c_restored
from terminal import Terminal

DEMO = ROOT / "examples" / "demo.py"


def test_live_view_draws_the_tree_follows_restarts_and_quits_with_q():
    demo = subprocess.Popen([sys.executable, str(DEMO), "--duration", "120",
                             "--crash-every", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=ctrl_c_restored)
    try:
        node = re.search(r"node (\w+) is running", demo.stdout.readline()).group(1)
        view = Terminal(["-m", "otpy.observer", node, "--interval", "0.3"])
        try:
            screen = view.wait_for(lambda s: "─ flaky" in s and "[job-2]" in s)
            assert f"node {node}" in screen
            for drawn in ("app ", "├─ config", "├─ cache", "│  ├─ shard-0", "│  └─ shard-1",
                          "├─ jobs", "│  └─ [job-2]", "─ flaky"):
                assert drawn in screen, drawn
            assert re.search(r"app\s+<\d+>\s+\d+\s+supervisor\s+waiting", screen)
            # the flaky worker crashes every second: its death and restart show up
            screen = view.wait_for(lambda s: "RuntimeError('flaky crashed on purpose')" in s
                                   and re.search(r"flaky os pid \d+ restarted", s))
            # select a row: its details (links, monitors, last exit) appear
            view.press(b"\x1b[B")
            screen = view.wait_for(lambda s: "behaviour Supervisor" in s and "links <" in s)
            assert "last exit reason" in screen
            view.press(b"q")
            assert view.close() == 0
        finally:
            if view.proc.poll() is None:
                view.close(timeout=1)
        demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops its tree and exits
        rest = demo.communicate(timeout=DEADLINE)[0]
        assert demo.returncode == 0
        assert "Ctrl-C" in rest and "stopped cleanly" in rest
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
    strays = [p for p in psutil.process_iter(["name"]) if p.info["name"] == f"otpy-{node}"]
    assert strays == []
