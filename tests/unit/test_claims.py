"""The claims page (otpy_pool/_claims.py): across OS processes, a claim is
one process's alone until it ends, and the kernel ends it when that process
dies (POSIX record locks), which a server's waiting thread then sees; and
only regular workers have a slot."""

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


def test_overflow_workers_are_never_open_to_claims():
    """The server hands overflow workers out itself (so that they go idle and
    retire when load falls): a regular worker's slot freed by its death goes
    to its replacement, never to the overflow worker alive meanwhile."""
    import os
    import signal

    from otpy.testing import wait_for
    from otpy_pool import Pool, _caller
    from otpy_pool._io import run

    from pool_workers import Notes

    pool = Pool.start_link(Notes, size=1, max_overflow=1, overflow_idle=60.0)
    try:
        with pool.checkout() as held:  # the regular worker held: the next needs an overflow
            overflow = pool.execute("whoami")
            os.kill(held.pid.os_pid, signal.SIGKILL)
            wait_for(lambda: held.pid not in pool.workers(), DEADLINE)
        wait_for(lambda: (pool.status().workers, pool.status().idle) == (2, 2), DEADLINE)
        (replacement,) = [w for w in pool.workers() if w != overflow]
        claims = run(_caller.claims_on(pool))
        assert {word for word in claims.page.words if word} == \
            {replacement.serial << 32 | replacement.os_pid}
    finally:
        pool.stop()
