"""The zygote's relation tables and death-notice ordering, without processes.

A test of the runtime's internals: it imports otpy._runtime.tables directly.
"""

from __future__ import annotations

from otpy._runtime import tables
from otpy._runtime.tables import Kill, Relations, Tell
from otpy._runtime.terms import Pid, Ref

NODE = "core"


def rows(*specs: tuple[int, bool]) -> dict[int, Relations]:
    """A table of processes: (serial, trapping)."""
    return {serial: Relations(Pid(NODE, serial, 1000 + serial), trap) for serial, trap in specs}


def kill(table: dict[int, Relations], serial: int, cls: str = "other", body: bytes = b"boom"):
    dead = table.pop(serial)
    return dead, tables.death(table, dead, cls, body)


def kinds(notices) -> list[str]:
    return [n.term[0] if isinstance(n, Tell) else "kill" for n in notices]


def test_watchers_then_links_then_monitors():
    t = rows((1, False), (2, True), (3, False), (4, False), (5, True))
    dead = t[1]
    tables.monitor(t[4], dead, Ref((NODE, 4), 1))  # made first, told last
    tables.link(dead, t[2])
    tables.link(dead, t[3])
    tables.watch(t[5], dead)
    tables.monitor(t[2], dead, Ref((NODE, 2), 2))
    _, notices = kill(t, 1)
    order = kinds(notices)
    assert order[0] == "dead"
    assert sorted(order[1:3]) == ["exit", "kill"]
    assert order[3:] == ["down", "down"]
    assert [n.serial for n in notices if isinstance(n, Tell) and n.term[0] == "down"] == [4, 2]


def test_a_linked_process_is_told_if_trapping_killed_if_not_spared_on_normal():
    t = rows((1, False), (2, True), (3, False))
    tables.link(t[1], t[2])
    tables.link(t[1], t[3])
    dead, notices = kill(t, 1, "other", b"why")
    assert Tell(2, ("exit", dead.pid, b"why", False)) in notices
    assert Kill(3) in notices

    t = rows((1, False), (2, True), (3, False))
    tables.link(t[1], t[2])
    tables.link(t[1], t[3])
    dead, notices = kill(t, 1, "normal", b"normal")
    assert notices == [Tell(2, ("exit", dead.pid, b"normal", False))]  # 3 lives on


def test_the_dead_leave_every_relation_on_both_sides():
    t = rows((1, False), (2, True), (3, False), (4, False))
    dead = t[1]
    tables.link(dead, t[2])
    on_dead, held = Ref((NODE, 3), 1), Ref((NODE, 1), 2)
    tables.monitor(t[3], dead, on_dead)
    tables.monitor(dead, t[4], held)  # a monitor the dead process held
    tables.watch(t[3], dead)
    tables.watch(dead, t[4])
    kill(t, 1)
    assert t[2].links == set()
    assert t[3].monitoring == {} and t[3].watching == set()
    assert t[4].monitors == {} and t[4].watchers == set()


def test_relations_to_processes_already_gone_are_skipped():
    t = rows((1, False), (2, False), (3, False))
    tables.link(t[1], t[2])
    tables.monitor(t[3], t[1], Ref((NODE, 3), 1))
    del t[2], t[3]  # both died before it (their deaths not processed against it)
    _, notices = kill(t, 1)
    assert notices == []


def test_down_carries_the_ref_the_pid_and_the_reason():
    t = rows((1, False), (2, False))
    ref = Ref((NODE, 2), 7)
    tables.monitor(t[2], t[1], ref)
    dead, notices = kill(t, 1, "other", b"reason")
    assert notices == [Tell(2, ("down", ref, dead.pid, b"reason"))]


def test_unlink_demonitor_and_self_link():
    t = rows((1, False), (2, False))
    tables.link(t[1], t[1])  # a process cannot link to itself
    assert t[1].links == set()
    tables.link(t[1], t[2])
    tables.unlink(t, t[2], 1)
    assert t[1].links == set() and t[2].links == set()
    ref = Ref((NODE, 1), 1)
    tables.monitor(t[1], t[2], ref)
    assert tables.demonitor(t, t[1], ref) is True
    assert tables.demonitor(t, t[1], ref) is False
    assert t[2].monitors == {} and t[1].monitoring == {}
    _, notices = kill(t, 2)
    assert notices == []
