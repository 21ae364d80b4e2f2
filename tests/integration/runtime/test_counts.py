"""The node's counts on the observation page (what otpy.metrics publishes):
spawns, exits by class, and the events processes tally. Counts only grow
and the node is the test program's, shared by every test: each test checks
the change its own processes made."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import pytest

import otpy
from helpers import expect_down
from otpy import observer
from otpy.lowlevel import tally


def counts() -> dict:
    return observer.snapshot()["counts"]


def die(how: str) -> None:
    if how == "raise":
        raise RuntimeError("on purpose")
    if how == "shutdown":
        raise otpy.ProcessExit(("shutdown", "planned"))
    if how == "exit":
        sys.exit(3)
    if how == "segv":
        faulthandler.disable()  # pytest's, inherited: no "Fatal Python error" dump
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "hang":
        otpy.receive()


def test_spawns_and_exits_by_class():
    before = counts()
    for how in ("return", "raise", "shutdown", "exit", "segv"):
        _pid, ref = otpy.spawn_monitor(die, how)
        expect_down(ref)
    hung, ref = otpy.spawn_monitor(die, "hang")
    otpy.exit(hung, "kill")
    expect_down(ref)
    after = counts()
    assert after["spawns"] - before["spawns"] == 6
    changed = {cls: after["exits"][cls] - before["exits"][cls] for cls in after["exits"]}
    assert changed == {"normal": 1, "error": 1, "shutdown": 1, "exit": 1, "signal": 1,
                       "killed": 1}


def tallier(times: int) -> None:
    for _ in range(times):
        tally("retried", "fetch")
    tally("gave_up")


def kept(label: str) -> dict:
    return {(event, detail): n for event, who, detail, n in counts()["tallies"] if who == label}


def test_a_tally_is_kept_under_the_process_label_after_it_died():
    before = kept("tallier")
    pid, ref = otpy.spawn_monitor(lambda: (otpy.register("tallier", otpy.self()), tallier(3)))
    expect_down(ref)
    after = kept("tallier")
    assert {key: n - before.get(key, 0) for key, n in after.items()} == {
        ("retried", "fetch"): 3, ("gave_up", None): 1}


@pytest.mark.parametrize("event, detail", [("", None), (None, None), ("ok", 3)])
def test_tally_refuses_what_it_cannot_count(event, detail):
    with pytest.raises(TypeError):
        tally(event, detail)
