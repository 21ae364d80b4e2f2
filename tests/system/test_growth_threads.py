"""A program that starts threads before its first otpy call (Python 3.12+ warns
on a fork from a multi-threaded process: the node's start forks its zygote)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import threading, otpy

    started = threading.Event()
    done = threading.Event()
    helper = threading.Thread(target=lambda: (started.set(), done.wait()))
    helper.start()
    started.wait()

    def double(parent, x):
        otpy.send(parent, 2 * x)

    otpy.spawn(double, otpy.self(), 21)   # the node starts here, with two threads
    print(otpy.receive(timeout=10), flush=True)
    done.set()
    helper.join()
""")


def test_a_program_with_threads_starts_a_node_without_a_fork_warning():
    result = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", PROGRAM],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    assert "multi-threaded" not in result.stderr
