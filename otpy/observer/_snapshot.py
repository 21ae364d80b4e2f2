"""Reading one node: its tables from the zygote's page, each process's state
and mailbox length from the status table, memory and CPU from /proc.

Only the zygote is asked for anything (one signal per read, see
otpy._runtime.observe); the node's processes are never called, so a busy or
hung one shows like any other (status "running", its mailbox growing).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import psutil

from .. import OtpyError, ProcessRow
from ..lowlevel.observation import PAGE_NAME, REQUEST_SIGNAL, page_seq, read_page
from ..lowlevel import check_timeout
from ..lowlevel.observation import STATUS_NAME
from ..lowlevel.observation import STATE_NAMES, PageRow, StatusTable
from ._nodes import Node, NodeNotFound, find_fd, find_node, open_memfd

READ_TIMEOUT = 2.0
UNIQUE_MEMORY_INTERVAL = 5.0  # seconds between two readings of a process's USS and PSS


class SnapshotRow(ProcessRow[int]):
    """A process in a ``snapshot()``: ``otpy.ProcessRow`` (pids as serial
    numbers; the observer always fills in ``memory``) plus what it works out."""

    program: bool  # the program's own process
    kind: str  # "supervisor", "worker" (a supervised child) or "process"
    restarts: int  # how often its supervisor restarted this child
    uptime: float  # seconds
    memory_unique: int  # USS bytes: what only this process holds (what killing it frees)
    memory_proportional: int  # PSS bytes: its fair share of the pages it shares
    cpu_percent: float
    child_id: str | None
    behaviour: str | None
    supervisor: int | None  # its supervisor's serial
    last_exit: str | None  # why the previous incarnation of this child exited
    children: list[SnapshotRow]  # a supervisor's children, in start order


class ObserverError(OtpyError, RuntimeError):
    """The node could not be read (it stopped answering, say)."""


class NodeReader:
    """An open view of one node, for repeated reads (the live view keeps one).

    It holds the node's page and status table open and, between reads, the
    CPU counters that CPU % is computed from. Only the same OS user can open
    these: the kernel checks when ``/proc/<zygote>/fd/N`` is opened.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        zygote = node.zygote_os_pid
        self._pidfd = -1
        self._page = -1
        try:
            self._pidfd = os.pidfd_open(zygote)
            self._page = open_memfd(zygote, PAGE_NAME)
            status_fd = open_memfd(zygote, STATUS_NAME)
            try:
                self._status = StatusTable.open_readonly(status_fd)
            finally:
                os.close(status_fd)
        except (OSError, NodeNotFound) as exc:
            self.close()
            raise NodeNotFound(f"node {node.node} cannot be read: {exc}") from None
        self._cpu: dict[int, psutil.Process] = {}
        self._unique: dict[int, tuple[float, int, int]] = {}  # serial -> (when, USS, PSS)

    def read(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Ask the zygote for fresh tables and return a snapshot (see :func:`snapshot`)."""
        return self._build(self.read_tables(timeout))

    def read_tables(self, timeout: float | None = READ_TIMEOUT) -> dict[str, Any]:
        """Ask the zygote for fresh tables and return them as it published them
        (the page's JSON: "processes" as PageRows, "counts", "recent_exits",
        ...), with no /proc reading: what otpy.metrics builds on."""
        timeout = check_timeout(timeout, "snapshot timeout")
        before = page_seq(self._page)
        try:
            signal.pidfd_send_signal(self._pidfd, REQUEST_SIGNAL)
        except ProcessLookupError:
            raise NodeNotFound(f"node {self.node.node} is gone") from None
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while True:
            seq = page_seq(self._page)
            if seq > before and seq % 2 == 0:
                break
            if time.monotonic() > deadline:
                raise ObserverError(f"node {self.node.node} did not publish its tables "
                                    f"within {timeout}s")
            time.sleep(pause)  # the observer's own wait, never the node's
            pause = min(pause * 2, 0.01)
        page = read_page(self._page)
        if page is None:
            raise ObserverError(f"node {self.node.node}: its tables kept changing while read")
        return json.loads(page[1])

    def mailbox(self, serial: int) -> tuple[str, int] | None:
        """A live process's status ("running" or "waiting") and mailbox length,
        from the status table (fresher than the page); None once it is gone."""
        slot = self._status.get(serial)
        return None if slot is None else (STATE_NAMES.get(slot[0], "unknown"), slot[1])

    def open_memfd(self, os_pid: int, name: str) -> int:
        """Open, read-only, the memfd called ``name`` that a process of this node
        holds (``os_pid``): how a reader gets at shared memory a process
        publishes (otpy.metrics' sources). The caller closes the descriptor.
        FileNotFoundError if the process holds none by that name (or is gone)."""
        fd = find_fd(os_pid, name)
        if fd is None:
            raise FileNotFoundError(f"os pid {os_pid} holds no memfd called {name!r}")
        return os.open(f"/proc/{os_pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)

    def _build(self, tables: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rows = {p["pid"]: self._row(p, now) for p in tables["processes"]}
        self._cpu = {serial: proc for serial, proc in self._cpu.items() if serial in rows}
        self._unique = {serial: m for serial, m in self._unique.items() if serial in rows}
        # the program first, then start order within each supervisor, then spawn order
        order = {p["pid"]: (not p["program"], p["meta"].get("order", p["pid"]), p["pid"])
                 for p in tables["processes"]}
        roots = []
        for row in sorted(rows.values(), key=lambda r: order[r["pid"]]):
            parent = rows.get(row["supervisor"]) if row["supervisor"] is not None else None
            if parent is not None and parent is not row:
                parent["children"].append(row)
            else:
                roots.append(row)
        return {
            "node": tables["node"],
            "os_pid": tables["program_os_pid"],
            "zygote_os_pid": tables["zygote_os_pid"],
            "cmdline": self.node.cmdline,
            "uptime": round(now - tables["started_at"], 3),
            "processes": len(rows),
            "taken_at": tables["written_at"],
            "tree": roots,
            "recent_exits": tables["recent_exits"],
            "counts": tables["counts"],
        }

    def _row(self, p: PageRow, now: float) -> SnapshotRow:
        meta = p["meta"]
        serial = p["pid"]
        slot = self.mailbox(serial)  # fresher than the page's
        if p["exiting"] or slot is None:
            status, queue = "exiting", 0
        else:
            status, queue = slot
        if meta.get("is_supervisor"):
            kind = "supervisor"
        elif meta.get("supervisor") is not None:
            kind = "worker"
        else:
            kind = "process"
        # The program's CPU time counts from its own start; any other process's
        # from its spawn (one made from the zygote's spare was created before).
        started_at = None if p["program"] else p["started_at"]
        (rss, uss, pss), cpu = self._usage(serial, p["os_pid"], started_at, now)
        return {
            "pid": serial,
            "name": p["name"],
            "namespace": p["namespace"],
            "os_pid": p["os_pid"],
            "parent": p["parent"],
            "status": status,
            "trap_exit": p["trap_exit"],
            "links": p["links"],
            "monitors": p["monitors"],
            "monitored_by": p["monitored_by"],
            "message_queue_len": queue,
            "inbound_bytes": p["inbound_bytes"],
            "started_at": p["started_at"],
            "memory": rss,
            "program": p["program"],
            "kind": kind,
            "restarts": meta.get("restarts", 0),
            "uptime": round(now - p["started_at"], 3),
            "memory_unique": uss,
            "memory_proportional": pss,
            "cpu_percent": cpu,
            "child_id": meta.get("child_id"),
            "behaviour": meta.get("behaviour"),
            "supervisor": meta.get("supervisor"),
            "last_exit": meta.get("last_exit"),
            "children": [],
        }

    def _usage(self, serial: int, os_pid: int, started_at: float | None, now: float
               ) -> tuple[tuple[int, int, int], float]:
        """(RSS, USS, PSS) bytes and CPU %: since the previous read, or over its life on
        the first (since ``started_at``, or the OS process's creation if None).

        RSS counts every page a process maps, the pages it shares with the zygote
        and with every other process included (all of them forked from it): on its
        own it reads as if each process cost the whole zygote. USS is what the
        process alone holds (what killing it frees), PSS its fair share of the
        shared pages. They cost a walk of its page tables (~0.2 ms a process, in
        the kernel, under the process's memory lock), so they are read again only
        every UNIQUE_MEMORY_INTERVAL seconds: at the live view's fastest refresh a
        walk of every process each time took a call's p50 from 24 to 140 us.
        """
        proc = self._cpu.get(serial)
        try:
            if proc is None:
                proc = self._cpu[serial] = psutil.Process(os_pid)
                times = proc.cpu_times()
                proc.cpu_percent(None)  # start the interval for the next read
                age = now - (proc.create_time() if started_at is None else started_at)
                cpu = 100.0 * (times.user + times.system) / age if age > 0 else 0.0
            else:
                cpu = proc.cpu_percent(None)
            rss = proc.memory_info().rss
            taken = self._unique.get(serial)
            clock = time.monotonic()
            if taken is None or clock - taken[0] >= UNIQUE_MEMORY_INTERVAL:
                full = proc.memory_full_info()
                taken = self._unique[serial] = (clock, full.uss, full.pss)
            return (rss, taken[1], taken[2]), round(cpu, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return (0, 0, 0), 0.0

    def close(self) -> None:
        for fd in (self._pidfd, self._page):
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._page = -1
        status = getattr(self, "_status", None)
        if status is not None:
            status.mem.close()
            self._status = None

    def __enter__(self) -> "NodeReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def snapshot(node: str | int | None = None, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
    """One reading of a running node, as a dict ready for ``json.dumps``.

    ``node``: a node id or its program's OS pid; None means this program's own
    node, or the only node running. The result::

        {"node", "os_pid" (the program's), "zygote_os_pid", "cmdline", "uptime",
         "processes" (how many), "taken_at", "recent_exits", "counts",
         "tree": [SnapshotRow, ...]}

    Each row is an ``otpy.ProcessRow`` (what ``otpy.process_info`` returns, with
    serial numbers for pids) plus what the observer works out: "kind"
    (supervisor/worker/process), "restarts", "uptime", "memory_unique" (USS),
    "memory_proportional" (PSS), "cpu_percent", "child_id", "behaviour",
    "supervisor", "last_exit", "program" and "children" (see SnapshotRow).

    Supervisors list their children in start order; processes that no
    supervisor holds are at the top level. ``counts``: processes spawned since
    the node started, exits by class (see otpy.lowlevel.observation.EXIT_CLASSES),
    and the events processes tallied (``[event, process label, detail, count]``:
    a supervisor's "restart" per child and "restart_intensity_reached"). CPU % is over each process's life
    (a NodeReader kept open gives it between reads).
    """
    with NodeReader(find_node(node)) as reader:
        return reader.read(timeout)

