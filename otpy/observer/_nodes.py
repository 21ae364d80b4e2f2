"""Finding the running otpy programs ("nodes") of the current OS user.

There is no registry to go stale: a node is found by its keeper, the process
titled ``otpy-<node>`` whose parent (the program) is not, and the keeper's
child of the same title, the zygote, holds its tables. A program killed by
SIGKILL takes its node with it within milliseconds, and a node whose
program is already gone is skipped, so a dead node never appears.
"""

from __future__ import annotations

import dataclasses
import os
import time

import psutil

from .. import OtpyError
from ..lowlevel.observation import PAGE_NAME, STATUS_NAME, StatusTable

PREFIX = "otpy-"


class NodeNotFound(OtpyError, LookupError):
    """No running node matches, or several do and none was named."""


@dataclasses.dataclass(frozen=True)
class Node:
    """One running otpy program."""

    node: str  # the node id
    os_pid: int  # the program's OS pid
    zygote_os_pid: int
    cmdline: str
    processes: int  # otpy processes, the program's own included
    started_at: float  # when the node started (the program's first otpy call)

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_at)

    def as_dict(self) -> dict:
        return {"node": self.node, "os_pid": self.os_pid, "zygote_os_pid": self.zygote_os_pid,
                "cmdline": self.cmdline, "processes": self.processes,
                "uptime": round(self.uptime, 3)}


def list_nodes() -> list[Node]:
    """The running nodes of the current OS user, oldest first."""
    uid = os.getuid()
    procs: dict[int, tuple[str, int]] = {}
    for p in psutil.process_iter(["name", "ppid", "uids"]):
        info = p.info
        uids = info.get("uids")
        if uids is None or uids.real != uid or not info.get("name"):
            continue
        procs[p.pid] = (info["name"], info["ppid"])
    nodes = []
    for os_pid, (name, ppid) in procs.items():
        if not name.startswith(PREFIX) or procs.get(ppid, ("", 0))[0] == name:
            continue  # not otpy, or not a node's first process (its keeper)
        if ppid not in procs:
            continue  # the program is gone (or not ours): the node is dying
        # the keeper's child of the same name is the zygote
        zygote = next((p for p, (n, pp) in procs.items() if pp == os_pid and n == name), None)
        if zygote is None:
            continue  # still starting, or ending
        node = _describe(name[len(PREFIX):], zygote, ppid)
        if node is not None:
            nodes.append(node)
    return sorted(nodes, key=lambda n: n.started_at)


def _describe(node_id: str, zygote: int, program: int) -> Node | None:
    if find_fd(zygote, PAGE_NAME) is None:
        return None  # an otpy-named process that is not a zygote (or not ready yet)
    try:
        cmdline = " ".join(psutil.Process(program).cmdline())
        started = psutil.Process(zygote).create_time()
        count = _live_processes(zygote)
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError, NodeNotFound):
        return None
    return Node(node_id, program, zygote, cmdline, count, started)


def _live_processes(zygote: int) -> int:
    """The node's otpy processes, the program's own included, as its status
    table has them (its OS processes also include the zygote's spare)."""
    opened = open_memfd(zygote, STATUS_NAME)
    try:
        table = StatusTable.open_readonly(opened)
    finally:
        os.close(opened)
    try:
        return table.live()
    finally:
        table.close()


def open_memfd(os_pid: int, name: str) -> int:
    """A descriptor of our own for the memfd ``os_pid`` (a zygote) holds as ``name``."""
    fd = find_fd(os_pid, name)
    if fd is None:
        raise NodeNotFound(f"os pid {os_pid} is not an otpy zygote (no {name} memfd)")
    return os.open(f"/proc/{os_pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def find_fd(os_pid: int, memfd_name: str) -> int | None:
    """The fd number under which ``os_pid`` holds the memfd called ``memfd_name``."""
    target = f"/memfd:{memfd_name} (deleted)"
    try:
        fds = os.listdir(f"/proc/{os_pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{os_pid}/fd/{fd}") == target:
                return int(fd)
        except OSError:
            continue
    return None


def find_node(which: str | int | None = None) -> Node:
    """The node named by id or by its program's OS pid; with None, the calling
    program's own node if it has one, else the only node running."""
    nodes = list_nodes()
    if which is None:
        own = [n for n in nodes if n.os_pid == os.getpid()]
        if own:
            return own[0]
        if len(nodes) == 1:
            return nodes[0]
        if not nodes:
            raise NodeNotFound("no otpy node is running (as this user)")
        raise NodeNotFound("several otpy nodes are running; name one: "
                           + ", ".join(f"{n.node} (os pid {n.os_pid})" for n in nodes))
    text = str(which)
    for n in nodes:
        if text in (n.node, str(n.os_pid)):
            return n
    raise NodeNotFound(f"no running otpy node {text!r} (as this user); running: "
                       + (", ".join(f"{n.node} (os pid {n.os_pid})" for n in nodes) or "none"))

