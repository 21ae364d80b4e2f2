"""One schema for what the node knows of a process, wherever it is read.

``process_info`` returns a ``ProcessRow[Pid]``; the zygote publishes a
``PageRow`` per process on the observation page; the observer's
``snapshot()`` extends that into its own rows (``otpy.observer.SnapshotRow``).
The keys and their meanings are the same in all three. Only how the row names
processes differs, hence the type parameter: a ``Pid`` inside the program
(something it can send to or link with), the serial number on the page and in
snapshots (plain JSON, read by another program).
"""

from __future__ import annotations

from typing import Any, Generic, NotRequired, TypedDict, TypeVar

P = TypeVar("P")


class ProcessRow(TypedDict, Generic[P]):
    """A live process as the node's tables hold it."""

    pid: P
    name: str | None  # its registered name
    namespace: str  # the namespace it was spawned in ("" outside isolated trees)
    os_pid: int
    parent: P | None  # the process that spawned it
    status: str  # "running", "waiting" (in receive); the observer adds "exiting"
    trap_exit: bool
    links: list[P]
    monitors: list[P]  # the processes it monitors
    monitored_by: list[P]
    message_queue_len: int  # messages read from its socket, not yet received
    inbound_bytes: int  # bytes sent to it, not yet read
    started_at: float  # epoch seconds
    # RSS bytes: process_info and snapshot() measure it; the page leaves it
    # out (reading /proc for every process would stall the zygote).
    memory: NotRequired[int]


class PageRow(ProcessRow[int]):
    """A process on the observation page: the row, plus what the zygote alone knows."""

    program: bool  # the program's own process (the node's first)
    exiting: bool  # its exit is being delivered
    meta: dict[str, Any]  # what behaviours annotated (otpy.lowlevel.annotate)


def process_label(name: str | None, program: bool, child_id: str | None,
                  behaviour: str | None) -> str:
    """What a process is called where no pid may be shown (the observer's NAME
    column, otpy.metrics' labels): its registered name, else ``(program)``,
    else ``[child id]``, else ``(behaviour)``, else ``-``."""
    if name:
        return name
    if program:
        return "(program)"
    if child_id is not None:
        return f"[{child_id}]"
    if behaviour:
        return f"({behaviour})"
    return "-"
