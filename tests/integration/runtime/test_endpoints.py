"""Only the node's own processes can reach a process: there is nothing to connect to.

Every socket of a node is an anonymous socketpair made by the zygote and handed
over by inheritance or SCM_RIGHTS; no process binds a path or an abstract
name, so no other user (nor any other program) can send it a byte.
"""

from __future__ import annotations

import os
import re

import otpy

from helpers import echo, kill_and_wait


def socket_inodes(os_pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{os_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{os_pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def named_unix_sockets() -> dict[int, str]:
    named = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8:
                named[int(parts[6])] = parts[7]
    return named


def test_no_process_of_the_node_has_a_named_endpoint():
    from otpy import lowlevel as node

    me = otpy.self()
    e = otpy.spawn(echo)
    otpy.send(e, (me, "warm"))  # the connection between us exists now
    assert otpy.receive(timeout=10) == ("echo", "warm")
    named = named_unix_sockets()
    for os_pid in (os.getpid(), node.zygote_os_pid(), e.os_pid):
        inodes = socket_inodes(os_pid)
        assert inodes, "expected the runtime's sockets"
        assert not inodes & named.keys(), {named[i] for i in inodes & named.keys()}
    kill_and_wait([e])


def test_the_runtime_creates_no_files():
    before = set(os.listdir("/tmp")) | {"/dev/shm/" + n for n in os.listdir("/dev/shm")}
    me = otpy.self()
    e = otpy.spawn(echo)
    otpy.send(e, (me, b"x" * (1 << 20)))  # a large message travels through a memfd
    assert otpy.receive(timeout=10) == ("echo", b"x" * (1 << 20))
    kill_and_wait([e])
    after = set(os.listdir("/tmp")) | {"/dev/shm/" + n for n in os.listdir("/dev/shm")}
    # the test toolkit's own directories (isolated trees', the flaky detector's)
    # and the segments test_isolated_tree makes may come from another test run
    # on the machine meanwhile: not the runtime's
    toolkit = ("otpy-tree-", "otpy-flaky-", "/dev/shm/otpy-test-")
    assert {n for n in after - before if ("otpy" in n or n.startswith("/dev/shm"))
            and not n.startswith(toolkit)} == set()
