"""The claims page (otpy_pool/_claims.py) across OS processes: a claim is
one process's alone until it ends, and the kernel ends it when that process
dies (POSIX record locks), which a server's waiting thread then sees."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import otpy
from otpy_pool._claims import ClaimsPage

from helpers import DEADLINE, ROOT


CLAIMER = textwrap.dedent("""
    import json, sys
    from otpy_pool._claims import Claims, ClaimsAddress
    from otpy import Pid
    server, os_pid, fd, slots, lifo = json.loads(sys.argv[1])
    claims = Claims(ClaimsAddress(Pid(*server), os_pid, fd, slots, lifo))
    claim = claims.take()
    print(json.dumps(None if claim is None else [claim.slot, claim.worker.serial]), flush=True)
    sys.stdin.read()  # holds its claim until the test ends it
""")


def claimer(page: ClaimsPage) -> subprocess.Popen:
    address = page.address
    server = [address.server.node, address.server.serial, address.server.os_pid]
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER,
         json.dumps([server, address.os_pid, address.fd, address.slots, address.lifo])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))


def claimed_by(process: subprocess.Popen) -> list | None:
    line = process.stdout.readline()
    assert line, "the claimer printed nothing"
    return json.loads(line)


def end(process: subprocess.Popen, kill: bool = False) -> None:
    if kill:
        process.kill()
    process.stdin.close()
    process.wait(DEADLINE)
    process.stdout.close()


def test_a_claim_is_one_process_s_until_it_ends_and_the_kernel_ends_it_at_its_death():
    page = ClaimsPage(otpy.self(), 2, lifo=True)
    try:
        page.open(0, otpy.Pid(otpy.self().node, 77, 1234))  # slot 1 stays the server's
        first = claimer(page)
        assert claimed_by(first) == [0, 77]
        assert page.claimed(0) and not page.hold(0)
        second = claimer(page)
        assert claimed_by(second) is None  # slot 0 is the first's, slot 1 the server's
        end(second)
        held = threading.Event()
        page.wait_for(0, lambda slot: held.set())  # the server wants it back
        end(first, kill=True)  # SIGKILLed holding it: its lock goes with it
        assert held.wait(DEADLINE)
        assert not page.claimed(0)
        page.open(0, otpy.Pid(otpy.self().node, 78, 1234))
        third = claimer(page)
        assert claimed_by(third) == [0, 78]
        end(third)
    finally:
        page.close()
