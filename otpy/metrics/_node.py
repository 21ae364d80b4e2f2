"""The node's own figures: processes, spawns, exits by class, restarts,
mailboxes and memory, from one reading of its page and status table.

Labels are bounded: a supervisor and a process are named by their label
(registered name, else ``[child id]``, else ``(behaviour)``), never by pid.
Per-process figures are kept to the LARGEST labels, so a node of 5,000
processes still makes a few series.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import psutil

from ..lowlevel.observation import EXIT_CLASSES, PageRow
from ._model import Metric, Sample
from ._sources import NodeView

LARGEST = 10  # per-process series kept, by size
_PAGE = os.sysconf("SC_PAGE_SIZE")

PROCESSES = Metric("otpy_processes", "gauge",
                   "Live processes of the node, the program's own included.")
SPAWNS = Metric("otpy_spawns_total", "counter", "Processes spawned since the node started.")
EXITS = Metric("otpy_exits_total", "counter",
               "Processes that exited since the node started, by reason class: normal, "
               "shutdown, killed (SIGKILL or exit 'kill'), signal (another fatal signal), "
               "exit (a non-zero exit status), error (an exception or any other reason).",
               ("reason",))
RESTARTS = Metric("otpy_supervisor_restarts_total", "counter",
                  "Restarts of a child by its supervisor (each attempt; a group restart "
                  "counts each member), since the node started.", ("supervisor", "child"))
INTENSITY = Metric("otpy_supervisor_restart_intensity_reached_total", "counter",
                   "Times a supervisor reached its restart intensity, stopped its children "
                   "and exited 'shutdown'.", ("supervisor",))
MAILBOX = Metric("otpy_mailbox_messages", "gauge",
                 "Messages waiting in the mailboxes of all the node's processes.")
PROCESS_MAILBOX = Metric("otpy_process_mailbox_messages", "gauge",
                         "Messages waiting in a process's mailbox, for the processes with "
                         "the most (processes sharing a label show their largest).",
                         ("process",))
PROCESS_RSS = Metric("otpy_process_resident_memory_bytes", "gauge",
                     "Resident memory of the processes with the most (the pages shared "
                     "with the zygote included).", ("process",), "By")
PROCESS_USS = Metric("otpy_process_unique_memory_bytes", "gauge",
                     "Memory only this process holds (what killing it frees), for the "
                     "processes with the most resident memory.", ("process",), "By")
START_TIME = Metric("otpy_node_start_time_seconds", "gauge",
                    "When the node started, in seconds since the epoch.", (), "s")


class NodeSource:
    """The node's own figures (the first source of every exporter)."""

    metrics: tuple[Metric, ...] = (PROCESSES, SPAWNS, EXITS, RESTARTS, INTENSITY, MAILBOX, PROCESS_MAILBOX,
               PROCESS_RSS, PROCESS_USS, START_TIME)

    def collect(self, view: NodeView) -> Mapping[str, Iterable[Sample]]:
        counts = view.counts
        restarts, intensity = [], []
        for event, who, detail, n in counts["tallies"]:
            if event == "restart":
                restarts.append(Sample((who, detail or ""), n))
            elif event == "restart_intensity_reached":
                intensity.append(Sample((who,), n))
        queues = {row["pid"]: view.mailbox(row) for row in view.rows}
        rss = {row["pid"]: _resident(row["os_pid"]) for row in view.rows}
        biggest_rss = _largest(view, rss)
        return {
            PROCESSES.name: [Sample((), len(view.rows))],
            SPAWNS.name: [Sample((), counts["spawns"])],
            EXITS.name: [Sample((cls,), counts["exits"].get(cls, 0)) for cls in EXIT_CLASSES],
            RESTARTS.name: restarts,
            INTENSITY.name: intensity,
            MAILBOX.name: [Sample((), sum(queues.values()))],
            PROCESS_MAILBOX.name: [Sample((label,), n) for label, (n, _row)
                                   in _largest(view, queues).items()],
            PROCESS_RSS.name: [Sample((label,), n) for label, (n, _row) in biggest_rss.items()],
            PROCESS_USS.name: [Sample((label,), _unique(row["os_pid"]))
                               for label, (_n, row) in biggest_rss.items()],
            START_TIME.name: [Sample((), view.started_at)],
        }


def _largest(view: NodeView, values: dict[int, int]) -> dict[str, tuple[int, PageRow]]:
    """The LARGEST labels by their largest non-zero value, each with that value
    and its row: processes sharing a label (unnamed ones of one behaviour, say)
    make one series, so the labels, not the processes, are bounded."""
    best: dict[str, tuple[int, PageRow]] = {}
    for row in view.rows:
        value = values[row["pid"]]
        if value <= 0:
            continue
        label = view.label(row)
        if label not in best or value > best[label][0]:
            best[label] = (value, row)
    ranked = sorted(best.items(), key=lambda item: item[1][0], reverse=True)[:LARGEST]
    return dict(ranked)


def _resident(os_pid: int) -> int:
    """RSS in bytes from /proc/<pid>/statm: a read of the kernel's counters,
    no walk of the process's pages (0 once the process is gone)."""
    try:
        with open(f"/proc/{os_pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _unique(os_pid: int) -> int:
    """USS in bytes. It walks the process's page tables (about 0.2 ms, under
    its memory lock), so it is read only for the LARGEST processes."""
    try:
        return psutil.Process(os_pid).memory_full_info().uss
    except (psutil.Error, OSError):
        return 0
