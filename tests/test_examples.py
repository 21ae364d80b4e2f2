"""The README's demo runs, says what each side saw, and leaves nothing behind."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_runs_and_leaves_no_process():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "reason=ZeroDivisionError" in out.stdout
    assert "monitor saw: Down(" in out.stdout and "reason='killed'" in out.stdout
    assert "took the name" in out.stdout
    assert "count = 105" in out.stdout and "restarted as" in out.stdout
    assert "count = 100 (fresh state" in out.stdout
    node = re.search(r"on node (\w+)", out.stdout).group(1)
    strays = [p for p in psutil.process_iter(["name"]) if p.info["name"] == f"otpy-{node}"]
    assert strays == []
