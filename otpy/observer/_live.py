"""The live view: a textual app that redraws a node's tree every interval.

The table is the tree (supervisors with their children in start order, then
processes no supervisor holds); the pane under it shows the selected row in
full (links, monitors, last exit reason...); the bottom pane lists deaths and
starts as they happen. Reads run in a worker thread, so a slow read never
freezes the screen. Keys: arrows select, r refreshes now, q quits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from ._nodes import Node, NodeNotFound
from ._snapshot import NodeReader, ObserverError
from ._text import COLUMNS, cells, duration, flatten, label, render_exit, size

EVENT_LINES = 6


class ObserverApp(App):
    TITLE = "otpy observer"
    BINDINGS = [("q", "quit", "Quit"), ("r", "refresh", "Refresh now")]
    CSS = """
    #tree { height: 1fr; }
    #details { height: auto; max-height: 12; border-top: solid $accent; padding: 0 1; }
    #events { height: auto; max-height: 8; border-top: solid $accent; padding: 0 1; }
    """

    def __init__(self, node: Node, interval: float) -> None:
        super().__init__()
        self.node = node
        self.interval = interval
        self.reader = NodeReader(node)
        self.read_lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.selected: str | None = None
        self.events: deque[str] = deque(maxlen=EVENT_LINES)
        self.seen_exits: set[tuple[int, float]] = set()
        self.known: set[int] | None = None
        self.gone = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="tree", cursor_type="row", zebra_stripes=True)
        yield Static("", id="details")
        yield Static("", id="events")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self.columns = table.add_columns(*COLUMNS)
        self.sub_title = f"node {self.node.node}"
        self.action_refresh()
        self.set_interval(self.interval, self.action_refresh)

    def action_refresh(self) -> None:
        if not self.gone:
            self.run_worker(self._read, thread=True, exclusive=True, group="read")

    def _read(self) -> None:
        with self.read_lock:
            try:
                snap = self.reader.read()
            except (NodeNotFound, ObserverError) as exc:
                self.call_from_thread(self._lost, str(exc))
                return
        self.call_from_thread(self._show, snap)

    def _lost(self, why: str) -> None:
        self.gone = True
        self.sub_title = f"node {self.node.node}: {why}"

    def _show(self, snap: dict[str, Any]) -> None:
        table = self.query_one(DataTable)
        flat = flatten(snap["tree"])
        order = [str(row["pid"]) for _, row in flat]
        self.rows = {str(row["pid"]): row for _, row in flat}
        if order != self.order:
            table.clear()
            for prefix, row in flat:
                table.add_row(*map(Text, cells(prefix, row)), key=str(row["pid"]))
            self.order = order
            if self.selected in self.rows:
                table.move_cursor(row=order.index(self.selected))
        else:
            for prefix, row in flat:
                for column, value in zip(self.columns, cells(prefix, row), strict=True):
                    table.update_cell(str(row["pid"]), column, Text(value))
        self.sub_title = (f"node {snap['node']} · os pid {snap['os_pid']} · "
                          f"{snap['processes']} processes · up {duration(snap['uptime'])} · "
                          f"read {time.strftime('%H:%M:%S')}")
        self._note_events(snap)
        self._show_details()

    def _note_events(self, snap: dict[str, Any]) -> None:
        for record in snap["recent_exits"]:
            key = (record["pid"], record["at"])
            if key not in self.seen_exits:
                self.seen_exits.add(key)
                if self.known is not None:
                    self.events.append(render_exit(record))
        pids = {row["pid"] for row in self.rows.values()}
        if self.known is not None:
            for pid in sorted(pids - self.known):
                row = self.rows[str(pid)]
                what = f"restarted (restart {row['restarts']})" if row["restarts"] else "started"
                self.events.append(f"{time.strftime('%H:%M:%S')} <{pid}> {label(row)} "
                                   f"os pid {row['os_pid']} {what}")
        self.known = pids
        self.query_one("#events", Static).update(
            Text("\n".join(self.events) or "no exits or starts since the observer attached"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != event.data_table.cursor_row:
            return  # stale: posted while the table was rebuilt, before the cursor was restored
        self.selected = event.row_key.value
        self._show_details()

    def _show_details(self) -> None:
        row = self.rows.get(self.selected or "")
        pane = self.query_one("#details", Static)
        if row is None:
            pane.update(Text("select a row for its details"))
            return
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started_at"]))
        pane.update(Text("\n".join([
            f"{label(row)}  <{row['pid']}>  os pid {row['os_pid']}  {row['kind']}"
            + (f"  behaviour {row['behaviour']}" if row["behaviour"] else "")
            + (f"  child {row['child_id']} of <{row['supervisor']}>" if row["child_id"] else ""),
            f"status {row['status']}  trap_exit {row['trap_exit']}  "
            f"mailbox {row['message_queue_len']} messages, {row['inbound_bytes']} bytes unread",
            f"memory {size(row['memory_unique'])} unique, {size(row['memory_proportional'])} "
            f"proportional, {size(row['memory'])} resident  cpu {row['cpu_percent']:.1f}%  "
            f"started {started}  restarts {row['restarts']}",
            f"links {_pids(row['links'])}  monitors {_pids(row['monitors'])}  "
            f"monitored by {_pids(row['monitored_by'])}",
            f"last exit reason {row['last_exit'] or '-'}",
        ])))

    def on_unmount(self) -> None:
        with self.read_lock:
            self.reader.close()


def _pids(serials: list[int]) -> str:
    return " ".join(f"<{s}>" for s in serials) or "-"


def run(node: Node, interval: float) -> int:
    ObserverApp(node, interval).run()
    return 0
