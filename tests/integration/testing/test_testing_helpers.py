"""The deterministic helpers: wait_for, wait_down, wait_registered, synchronize."""

from __future__ import annotations

import os

import pytest

import otpy
from otpy.testing import synchronize, wait_down, wait_for, wait_registered

DEADLINE = 10.0


def idle() -> None:
    otpy.receive()


def register_when_told(name: str) -> None:
    otpy.receive(match=lambda m: m == "register")
    otpy.register(name)
    otpy.receive()


# ---- wait_for -------------------------------------------------------------------

def test_wait_for_returns_the_first_truthy_value():
    values = iter([0, None, "", [], "found"])
    assert wait_for(lambda: next(values)) == "found"


def test_wait_for_timeout_names_the_predicate_and_its_last_value():
    def nothing_yet():
        return []

    with pytest.raises(otpy.Timeout, match=r"nothing_yet.*last value: \[\]"):
        wait_for(nothing_yet, timeout=0.05)
    with pytest.raises(otpy.Timeout, match=r"<lambda> at test_testing_helpers.py:\d+"):
        wait_for(lambda: 0, timeout=0)


def test_wait_for_needs_a_callable():
    with pytest.raises(TypeError, match="callable"):
        wait_for(True)


# ---- wait_down ------------------------------------------------------------------

def test_wait_down_gives_the_exit_reason():
    pid = otpy.spawn(idle)
    ref = otpy.monitor(pid)
    otpy.exit(pid, "stopped by test")
    assert wait_down(ref, DEADLINE) == "stopped by test"
    assert wait_down(pid, DEADLINE) == "noproc"  # already gone: nothing more to know


def test_wait_down_on_a_pid_waits_for_the_death():
    pid = otpy.spawn(idle)
    otpy.send(pid, "go away")  # idle returns after one message: a normal exit
    assert wait_down(pid, DEADLINE) in ("normal", "noproc")
    assert not otpy.is_alive(pid)


def test_wait_down_times_out_on_a_live_process():
    pid = otpy.spawn(idle)
    with pytest.raises(otpy.Timeout, match="still alive"):
        wait_down(pid, timeout=0.05)
    otpy.exit(pid, "kill")
    wait_down(pid, DEADLINE)
    with pytest.raises(TypeError, match="Pid or a monitor Ref"):
        wait_down("name")


# ---- wait_registered --------------------------------------------------------------

def test_wait_registered_returns_the_pid_once_registered():
    pid = otpy.spawn(register_when_told, "late")
    otpy.send(pid, "register")
    assert wait_registered("late", DEADLINE) == pid
    otpy.exit(pid, "kill")
    wait_down(pid, DEADLINE)


def test_wait_registered_times_out_naming_the_name():
    with pytest.raises(otpy.Timeout, match="'never'"):
        wait_registered("never", timeout=0.05)
    with pytest.raises(TypeError, match="non-empty str"):
        wait_registered("")


# ---- synchronize ----------------------------------------------------------------

class Marker:
    """Writes a file when it is unpickled, i.e. when its process loads its body
    (before the process reports ready)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(self.path, "w"):
            pass

    def __call__(self) -> str:
        return "marker"


def test_synchronize_releases_operations_only_once_all_are_ready(otpy_tree):
    loaded = os.path.join(otpy_tree.tmp_path, "loaded")
    path = otpy_tree.tmp_path

    def first() -> bool:  # runs after the last process has loaded its body
        return os.path.exists(os.path.join(path, "loaded"))

    results = synchronize({"first": first, "last": Marker(loaded)})
    assert results == {"first": True, "last": "marker"}


def test_synchronize_results_exceptions_and_deaths():
    def fails():
        raise KeyError("missing")

    def dies():
        os._exit(3)

    results = synchronize({"ok": lambda: 42, "fails": fails, "dies": dies})
    assert results["ok"] == 42
    assert isinstance(results["fails"], KeyError)
    assert isinstance(results["dies"], otpy.Exited) and results["dies"].reason == ("exit", 3)
    assert list(results) == ["ok", "fails", "dies"]


def test_synchronize_runs_operations_in_separate_processes():
    results = synchronize({name: os.getpid for name in "abc"})
    assert len(set(results.values())) == 3 and os.getpid() not in results.values()


def test_synchronize_kills_stragglers_and_names_them():
    def forever():
        otpy.receive()

    with pytest.raises(otpy.Timeout, match=r"\['stuck'\] \(killed\)"):
        synchronize({"quick": lambda: 1, "stuck": forever}, timeout=0.5)
    # the plugin's leak check fails this test if "stuck" survived


def test_synchronize_in_threads():
    import threading

    results = synchronize({name: threading.get_ident for name in "ab"}, in_processes=False)
    assert len(set(results.values())) == 2
    results = synchronize({"boom": lambda: 1 / 0}, in_processes=False)
    assert isinstance(results["boom"], ZeroDivisionError)


def test_synchronize_rejects_bad_input():
    with pytest.raises(TypeError, match="non-empty mapping"):
        synchronize({})
    with pytest.raises(TypeError, match="'x' is not callable"):
        synchronize({"x": 1})
