"""No orphans, one level down: what an otpy process starts (a subprocess,
a fork, a multiprocessing.Process, a grandchild, one in a session of its
own) ends when that process ends, however it ends (issue 21, item 4)."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import otpy
from otpy import lowlevel

import descendants
import helpers
from helpers import DEADLINE


def parent(report_to, how, kinds=descendants.KINDS):
    started = descendants.start(kinds)
    otpy.send(report_to, ("started", otpy.self(), started))
    if how == "returns":
        return
    if how == "raises":
        raise RuntimeError("the parent fails")
    otpy.receive()  # until killed or told to stop


class Starter(otpy.GenServer):
    """Traps exits (so a shutdown runs terminate, then it exits) and starts children."""

    def init(self, report_to):
        otpy.trap_exit(True)
        otpy.send(report_to, ("started", otpy.self(), descendants.start()))


def started():
    return helpers.expect(lambda m: type(m) is tuple and m[0] == "started", timeout=30)


def assert_all_gone(os_pids):
    survivors = helpers.wait_gone(os_pids, timeout=DEADLINE)
    assert survivors == [], f"still running after their otpy parent ended: {survivors}"


def test_every_kind_of_descendant_is_running_while_its_parent_lives():
    pid = otpy.spawn(parent, otpy.self(), "waits")
    _, _, os_pids = started()
    assert len(os_pids) >= len(descendants.KINDS) + 1
    assert helpers.wait_gone(os_pids, timeout=0) == sorted(os_pids)  # none gone
    otpy.exit(pid, "kill")
    assert_all_gone(os_pids)


@pytest.mark.parametrize("how", ["killed", "returns", "raises", "exit_signal"])
def test_descendants_end_with_a_process(how):
    pid = otpy.spawn(parent, otpy.self(), "returns" if how == "returns" else
                     "raises" if how == "raises" else "waits")
    mref = otpy.monitor(pid)
    _, _, os_pids = started()
    if how == "killed":
        otpy.exit(pid, "kill")
    elif how == "exit_signal":
        otpy.exit(pid, "shutdown")
    helpers.expect_down(mref)
    assert_all_gone(os_pids)


def test_descendants_end_with_a_server_its_supervisor_stops():
    spec = Starter.child_spec(otpy.self(), id="starter", shutdown=5.0)
    helpers.CURRENT_TREE.start_child(spec)
    _, pid, os_pids = started()
    mref = otpy.monitor(pid)
    otpy.Supervisor.terminate_child(helpers.CURRENT_TREE.supervisor, "starter")
    assert helpers.expect_down(mref).reason == "shutdown"
    assert_all_gone(os_pids)


def test_a_leftover_in_a_live_process_group_lives_until_its_process_ends():
    """A grandchild whose own parent (a shell) died is handed to the zygote
    (the subreaper) but stays in the otpy process's group: it is left alone
    while that process lives, and ends with it."""
    pid = otpy.spawn(parent, otpy.self(), "waits", kinds=("grandchild",))
    _, _, os_pids = started()
    shell, grandchild = os_pids[:2]
    os.kill(shell, signal.SIGKILL)
    assert helpers.wait_gone([shell]) == []
    # A death makes the zygote sweep for leftovers; a request answered after
    # that death's Down is answered after the sweep.
    mref = otpy.monitor(otpy.spawn(helpers.exit_with, "normal"))
    helpers.expect_down(mref)
    otpy.processes()
    leftover = psutil.Process(grandchild)
    assert leftover.status() != psutil.STATUS_ZOMBIE
    assert leftover.ppid() == lowlevel.zygote_os_pid()
    otpy.exit(pid, "kill")
    assert_all_gone(os_pids)
