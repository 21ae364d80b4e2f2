"""Plain-text forms of what the observer reads: the node list, the tree
(``--once``), and the cells both it and the live view show."""

from __future__ import annotations

import time
from typing import Any, Iterator

from ..lowlevel.observation import process_label
from ._nodes import Node

COLUMNS = ("NAME", "PID", "OS PID", "KIND", "STATUS", "RESTARTS", "UPTIME", "RSS", "USS", "CPU%",
           "MSGQ", "BEHAVIOUR")


def flatten(tree: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Rows in display order, each with its tree-drawing prefix (top level flush left)."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(rows: list[dict[str, Any]], prefix: str, top: bool) -> None:
        for i, row in enumerate(rows):
            last = i == len(rows) - 1
            out.append((prefix + ("" if top else "└─ " if last else "├─ "), row))
            walk(row["children"], "" if top else prefix + ("   " if last else "│  "), False)

    walk(tree, "", True)
    return out


def label(row: dict[str, Any]) -> str:
    """What a row is called: its registered name, else its child id, else its behaviour."""
    return process_label(row["name"], row["program"], row["child_id"], row["behaviour"])


def cells(prefix: str, row: dict[str, Any]) -> tuple[str, ...]:
    return (prefix + label(row), f"<{row['pid']}>", str(row["os_pid"]), row["kind"],
            row["status"], str(row["restarts"]), duration(row["uptime"]),
            size(row["memory"]), size(row["memory_unique"]), f"{row['cpu_percent']:.1f}",
            str(row["message_queue_len"]), row["behaviour"] or "")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f}B"
    for unit in ("K", "M"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f}{unit}"
    return f"{n / 1024:.1f}G"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Iterator[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()


def render_tree(snap: dict[str, Any]) -> str:
    head = (f"node {snap['node']}  os pid {snap['os_pid']}  processes {snap['processes']}  "
            f"up {duration(snap['uptime'])}  {snap['cmdline']}")
    rows = [cells(prefix, row) for prefix, row in flatten(snap["tree"])]
    return "\n".join([head, "", *table(rows, COLUMNS)]) + "\n"


def render_nodes(nodes: list[Node]) -> str:
    if not nodes:
        return "no otpy nodes running (as this user)\n"
    rows = [(n.node, str(n.os_pid), str(n.processes), duration(n.uptime), n.cmdline)
            for n in nodes]
    return "\n".join(table(rows, ("NODE", "OS PID", "PROCESSES", "UPTIME", "COMMAND"))) + "\n"


def render_exit(record: dict[str, Any]) -> str:
    """One recent death, for the live view's event pane."""
    who = record["name"] or (f"[{record['child_id']}]" if record["child_id"] else "")
    at = time.strftime("%H:%M:%S", time.localtime(record["at"]))
    return f"{at} <{record['pid']}> {who} os pid {record['os_pid']} exited: {record['reason']}"
