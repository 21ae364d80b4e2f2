"""Log events and crash reports, captured from real programs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import helpers
import otpy

TESTS = str(helpers.TESTS)
PROGRAM = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from otpy.testing import isolated_tree
    from servers import Counter

    if sys.argv[2] == "late":  # configured after the node (and its zygote) started
        otpy.self()
        otpy.configure_logging(json=True, level="debug", file=sys.argv[3])
    elif sys.argv[2] == "info":
        otpy.configure_logging(level="info")

    def crash_and_wait(crasher, dies, sup):
        ref = otpy.monitor(dies)
        otpy.cast(crasher, "crash")
        otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
        otpy.Supervisor.which_children(sup)  # answered after the restart

    with isolated_tree("logged") as tree:
        tree.start_child(Counter.child_spec(name="c"))
        crash_and_wait("c", "c", tree.supervisor)
        tree.start_child(otpy.Supervisor.child_spec([Counter.child_spec(name="w")],
                                                    id="fragile", name="fragile",
                                                    max_restarts=0))
        crash_and_wait("w", "fragile", tree.supervisor)  # fragile gives up at once
""")


def run(mode: str, log_file: str | None = None, **env: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", PROGRAM, TESTS, mode] + ([log_file] if log_file else [])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_LOG")}
    out = subprocess.run(args, capture_output=True, text=True, timeout=60,
                         env={**environment, **env})
    assert out.returncode == 0, out.stderr
    return out


def events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def one(evs: list[dict], event: str, **fields) -> dict:
    found = [e for e in evs if e["event"] == event and fields.items() <= e.items()]
    assert found, f"no {event!r} with {fields}; events: {[e['event'] for e in evs]}"
    return found[0]


def check_events(evs: list[dict]) -> None:
    node = evs[0]["node"]
    assert all(e["node"] == node and "timestamp" in e for e in evs)

    spawned = one(evs, "process spawned", level="debug")
    assert {"pid", "os_pid", "parent"} <= spawned.keys()
    assert spawned["tree"].startswith("logged#")

    started = one(evs, "child started", child_id="c", supervisor="logged", level="info")
    assert started["tree"].startswith("logged#") and started["restarts"] == 0

    crash = one(evs, "crash report", child_id="c", supervisor="logged", level="error")
    assert crash["reason"] == "RuntimeError('crashed in handle_cast')"
    assert crash["child_pid"] == started["child_pid"] and crash["restarts_in_window"] == 0
    assert 'raise RuntimeError("crashed in handle_cast")' in crash["exception"]
    assert "servers.py" in crash["exception"]  # the remote traceback, from the child

    exited = one(evs, "process exited", name="c", pid=started["child_pid"])
    assert exited["reason"] == crash["reason"] and exited["level"] == "debug"
    restarted = one(evs, "child restarted", child_id="c", supervisor="logged", level="warning")
    assert restarted["restarts"] == 1 and restarted["child_pid"] != started["child_pid"]

    gave_up = one(evs, "restart intensity exceeded", supervisor="fragile", level="error")
    assert gave_up["child_id"] == "w" and gave_up["max_restarts"] == 0
    one(evs, "child restarted", child_id="fragile", supervisor="logged")
    one(evs, "child terminated", child_id="c", supervisor="logged", reason="shutdown",
        level="info")


def test_json_events_configured_by_environment(tmp_path):
    path = tmp_path / "otpy.log"
    run("env", OTPY_LOG="json", OTPY_LOG_LEVEL="debug", OTPY_LOG_FILE=str(path))
    check_events(events(path))


def test_configuring_after_the_node_started_reaches_new_processes(tmp_path):
    path = tmp_path / "otpy.log"
    out = run("late", str(path))
    check_events(events(path))
    assert "crash report" not in out.stderr  # all of it went to the file


def test_console_output_by_default_is_readable_and_shows_what_went_wrong_only():
    err = run("console").stderr
    line = next(line for line in err.splitlines() if "crash report" in line)
    assert "[error" in line and "child_id=c" in line and "supervisor=logged" in line
    assert 'raise RuntimeError("crashed in handle_cast")' in err  # the traceback, as text
    assert re.search(r"\[warning +\] child restarted .*child_id=c", err)
    assert re.search(r"\[error +\] restart intensity exceeded .*supervisor=fragile", err)
    # progress, as in OTP 21+: not shown unless asked for
    for progress in ("process spawned", "process exited", "child started", "child terminated"):
        assert progress not in err, progress


@pytest.mark.parametrize("how", ["environment", "configure_logging"])
def test_info_level_adds_the_progress(how):
    if how == "environment":
        err = run("console", OTPY_LOG_LEVEL="info").stderr
    else:
        err = run("info").stderr
    assert re.search(r"\[info +\] child started .*child_id=c", err)
    assert re.search(r"\[info +\] child terminated .*child_id=c.*reason=shutdown", err)
    assert "crash report" in err
    assert "process spawned" not in err  # debug


CLEAN_PROGRAM = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from servers import Counter

    def worker():
        otpy.receive()

    def trapping_worker():
        otpy.trap_exit(True)
        otpy.receive()  # the supervisor's "shutdown" ends it

    sup = otpy.Supervisor.start_link([
        Counter.child_spec(0, name="counter"),
        Counter.child_spec(0, id="trapping", trap=True),
        otpy.ChildSpec("worker", otpy.spawn_link, args=(worker,)),
        otpy.ChildSpec("brutal", otpy.spawn_link, args=(worker,), shutdown="brutal_kill"),
        otpy.ChildSpec("trapper", otpy.spawn_link, args=(trapping_worker,)),
        otpy.DynamicSupervisor.child_spec(name="dynamic"),
    ], name="app")
    otpy.DynamicSupervisor.start_child("dynamic", Counter.child_spec(1))
    assert otpy.call("counter", ("add", 2)) == 2
    otpy.Supervisor.terminate_child(sup, "worker")
    otpy.Supervisor.restart_child(sup, "worker")
    if sys.argv[2] == "stop":
        otpy.Supervisor.stop(sup)
    # else: the program ends with the tree running; the node stops it in order
""")


@pytest.mark.parametrize("end", ["stop", "exit"])
def test_a_tree_that_starts_and_stops_cleanly_leaves_stderr_empty(end):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_LOG")}
    out = subprocess.run([sys.executable, "-c", CLEAN_PROGRAM, TESTS, end], capture_output=True,
                         text=True, timeout=60, env=environment)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


STUBBORN_PROGRAM = textwrap.dedent("""
    import otpy

    def stubborn(program):
        otpy.trap_exit(True)
        otpy.send(program, "trapping")
        while True:
            otpy.receive()  # ignores "shutdown"

    sup = otpy.Supervisor.start_link([otpy.ChildSpec("stubborn", otpy.spawn_link,
                                                     args=(stubborn, otpy.self()),
                                                     shutdown=0.1)])
    otpy.receive(timeout=10, match=lambda m: m == "trapping")
    otpy.Supervisor.terminate_child(sup, "stubborn")
""")


def test_a_child_killed_when_its_shutdown_time_ran_out_is_a_warning():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_LOG")}
    out = subprocess.run([sys.executable, "-c", STUBBORN_PROGRAM], capture_output=True,
                         text=True, timeout=60, env=environment)
    assert out.returncode == 0, out.stderr
    assert re.search(r"\[warning +\] child terminated .*child_id=stubborn.*reason=killed",
                     out.stderr)


def test_a_bad_level_is_refused_by_name():
    with pytest.raises(ValueError, match="'loud'"):
        otpy.configure_logging(level="loud")
