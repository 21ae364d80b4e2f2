"""Suite-wide guard: every test must leave no otpy process and an empty mailbox."""

from __future__ import annotations

import otpy
import pytest

from helpers import kill_and_wait

GRACE = 2.0  # a process that just sent its last message may still be exiting


@pytest.fixture(autouse=True)
def no_leaked_processes():
    me = otpy.self()
    yield
    refs = {otpy.monitor(p): p for p in otpy.processes() if p != me}
    leaked = []
    for ref, pid in refs.items():
        try:
            otpy.receive(timeout=GRACE, match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
        except otpy.Timeout:
            leaked.append(pid)
    kill_and_wait(leaked)
    while True:  # what a test left in the program's mailbox must not reach the next
        try:
            otpy.receive(timeout=0)
        except otpy.Timeout:
            break
    assert not leaked, f"test left processes running: {leaked}"
