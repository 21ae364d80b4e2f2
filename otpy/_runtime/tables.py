"""The node's relations and the order in which a death is announced: a pure core.

No sockets, no fork, no clock: the zygote keeps one ``Relations`` per live
process (its ``Entry`` is one), asks this module to change them, and on a
death gets back the notices to send, in the order they must be sent. Keeping
the rules here lets them be tested alone (tests/unit/test_zygote_core.py).

The ordering rules on a death, as the rest of the runtime relies on them:

1. call watchers are told ("dead") first: a caller waiting for a reply learns
   that none will come;
2. then linked processes: a trapping one gets an Exit message, another one
   is killed with the same reason unless the reason is "normal";
3. monitors last: once anyone has seen the Down, every linked process has
   already been sent its Exit, so a request sent after the Down (to a
   supervisor, say) is handled after that Exit.

Every notice to one process goes into its single ordered inbound stream,
behind what the dead process had already sent it, so Down never overtakes a
message.
"""

from __future__ import annotations

from typing import NamedTuple

from .reasons import NORMAL
from .terms import Pid, Ref


class Relations:
    """What ties one live process to others."""

    __slots__ = ("pid", "trap", "links", "monitors", "monitoring", "watchers", "watching")

    def __init__(self, pid: Pid, trap: bool) -> None:
        self.pid = pid
        self.trap = trap
        self.links: set[int] = set()
        self.monitors: dict[Ref, int] = {}  # monitors on this process: ref -> watcher
        self.monitoring: dict[Ref, int] = {}  # monitors this process holds: ref -> target
        self.watchers: set[int] = set()  # processes waiting on calls to this one
        self.watching: set[int] = set()


class Tell(NamedTuple):
    """Post ``term`` to process ``serial``'s inbound stream."""

    serial: int
    term: tuple


class Kill(NamedTuple):
    """Kill process ``serial`` with the dead process's reason."""

    serial: int


Rows = dict[int, Relations]


def link(a: Relations, b: Relations) -> None:
    if a is not b:
        a.links.add(b.pid.serial)
        b.links.add(a.pid.serial)


def unlink(rows: Rows, a: Relations, serial: int) -> None:
    a.links.discard(serial)
    b = rows.get(serial)
    if b is not None:
        b.links.discard(a.pid.serial)


def monitor(watcher: Relations, target: Relations, ref: Ref) -> None:
    target.monitors[ref] = watcher.pid.serial
    watcher.monitoring[ref] = target.pid.serial


def demonitor(rows: Rows, watcher: Relations, ref: Ref) -> bool:
    """Drop a monitor ``watcher`` holds; False if it held none with ``ref``."""
    serial = watcher.monitoring.pop(ref, None)
    if serial is None:
        return False
    target = rows.get(serial)
    if target is not None:
        target.monitors.pop(ref, None)
    return True


def watch(watcher: Relations, target: Relations) -> None:
    target.watchers.add(watcher.pid.serial)
    watcher.watching.add(target.pid.serial)


def death(rows: Rows, dead: Relations, cls: str, body: bytes) -> list[Tell | Kill]:
    """Take ``dead`` (already out of ``rows``) out of every relation; return the
    notices to send, in order. ``cls``/``body``: its exit reason's class and bytes."""
    serial = dead.pid.serial
    notices: list[Tell | Kill] = []
    for w in _present(rows, dead.watchers):
        w.watching.discard(serial)
        notices.append(Tell(w.pid.serial, ("dead", dead.pid, body)))
    for t in _present(rows, dead.watching):
        t.watchers.discard(serial)
    for p in _present(rows, dead.links):
        p.links.discard(serial)
        if p.trap:
            notices.append(Tell(p.pid.serial, ("exit", dead.pid, body, False)))
        elif cls != NORMAL:
            notices.append(Kill(p.pid.serial))
    for ref, watcher in dead.monitors.items():
        w = rows.get(watcher)
        if w is not None:
            w.monitoring.pop(ref, None)
            notices.append(Tell(watcher, ("down", ref, dead.pid, body)))
    for ref, target in dead.monitoring.items():
        t = rows.get(target)
        if t is not None:
            t.monitors.pop(ref, None)
    return notices


def _present(rows: Rows, serials: set[int]) -> list[Relations]:
    return [rows[s] for s in serials if s in rows]
