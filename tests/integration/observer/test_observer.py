"""otpy.observer: snapshots of a known tree, the CLI's --json/--once and node
list, and who may observe."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import helpers
import otpy
from helpers import DEADLINE, busy, expect_down, idle, wait_gone
from otpy import observer
from otpy.lowlevel import observation
from otpy.testing import wait_for
from otpy.observer._nodes import find_fd
from otpy.observer._text import flatten
from servers import Counter

# A program with a known tree, observed from outside: it prints its node and
# the pids of its tree, then runs until its stdin closes.
PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from servers import Counter

    sup = otpy.Supervisor.start_link([
        Counter.child_spec(name="alpha"),
        otpy.Supervisor.child_spec([Counter.child_spec(id="inner")], id="sub", name="sub"),
        otpy.DynamicSupervisor.child_spec(id="pool", name="pool"),
    ], name="top")
    otpy.DynamicSupervisor.start_child("pool", Counter.child_spec(id="member"))
    alpha = otpy.whereis("alpha")
    ref = otpy.monitor(alpha)
    print(json.dumps({"node": otpy.self().node, "alpha": alpha.os_pid}), flush=True)
    for line in sys.stdin:  # "sync": wait until alpha has died and been restarted
        otpy.receive(timeout=30, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
        otpy.Supervisor.which_children("top")  # answered after the restart
        print("synced", flush=True)
""")
TESTS = str(helpers.TESTS)


@contextlib.contextmanager
def observed_program():
    """Run PROGRAM; yield (process, what it printed); stop it and its node after."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, TESTS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the observed program did not start"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()


def observe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy.observer", *args], capture_output=True,
                          text=True, timeout=60)


def find(rows: list[dict], **fields) -> dict:
    for _prefix, row in flatten(rows):
        if all(row[k] == v for k, v in fields.items()):
            return row
    raise AssertionError(f"no row with {fields} in {[r['name'] for _, r in flatten(rows)]}")


def test_snapshot_draws_supervisors_with_children_in_start_order(otpy_tree):
    otpy_tree.start_child(Counter.child_spec(name="first"))
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(id="a"), Counter.child_spec(id="b")], id="nested"))
    otpy_tree.start_child(otpy.DynamicSupervisor.child_spec(id="dyn", name="dyn"))
    otpy.DynamicSupervisor.start_child("dyn", Counter.child_spec(id="d1"))
    loose = otpy.spawn(idle)

    snap = observer.snapshot()
    assert snap["node"] == otpy.self().node and snap["os_pid"] == os.getpid()
    assert snap["processes"] == len(otpy.processes())
    root = find(snap["tree"], pid=otpy_tree.supervisor.serial)
    assert root["kind"] == "supervisor" and root["name"] == otpy_tree.name
    assert [(c["child_id"], c["kind"]) for c in root["children"]] == [
        ("first", "worker"), ("nested", "supervisor"), ("dyn", "supervisor")]
    first, nested, dyn = root["children"]
    assert first["name"] == "first" and first["behaviour"] == "Counter"
    assert first["os_pid"] == otpy.whereis("first").os_pid
    assert first["status"] == "waiting" and first["restarts"] == 0 and first["memory"] > 0
    assert [c["child_id"] for c in nested["children"]] == ["a", "b"]
    assert [c["child_id"] for c in dyn["children"]] == ["d1"]
    top = find(snap["tree"], pid=loose.serial)
    assert top in snap["tree"] and top["kind"] == "process"  # no supervisor: top level
    assert find(snap["tree"], program=True)["os_pid"] == os.getpid()
    otpy.exit(loose, "kill")


def test_snapshot_after_a_sigkill_shows_the_new_os_pid_and_the_restart(otpy_tree):
    otpy_tree.start_child(Counter.child_spec(name="victim"))
    before = find(observer.snapshot()["tree"], name="victim")
    old = otpy.whereis("victim")
    ref = otpy.monitor(old)
    os.kill(old.os_pid, signal.SIGKILL)
    expect_down(ref)
    otpy.Supervisor.which_children(otpy_tree.supervisor)  # answered after the restart

    snap = observer.snapshot()
    after = find(snap["tree"], name="victim")
    assert after["os_pid"] != before["os_pid"] and after["pid"] != before["pid"]
    assert after["restarts"] == 1 and after["last_exit"] == "killed"
    assert {"pid": old.serial, "reason": "killed", "child_id": "victim"}.items() <= \
        [e for e in snap["recent_exits"] if e["pid"] == old.serial][0].items()


def keys_of(schema: type) -> set[str]:
    return set(schema.__required_keys__) | set(schema.__optional_keys__)


def test_process_info_the_page_and_snapshot_rows_share_one_schema(otpy_tree):
    """One schema, otpy.ProcessRow: process_info names processes by Pid, the page
    and snapshot() by serial number; the keys are the schema's and the values agree."""
    pid = otpy_tree.start_child(Counter.child_spec(name="shared"))  # linked to its supervisor
    otpy.monitor(pid)
    # idle from here on: its status stays "waiting" (while it answers, "running")
    wait_for(lambda: otpy.process_info(pid)["status"] == "waiting")

    info = otpy.process_info(pid)
    assert set(info) == keys_of(otpy.ProcessRow)
    row = find(observer.snapshot()["tree"], pid=pid.serial)
    assert set(row) == keys_of(observer.SnapshotRow)
    node = observer.find_node(None)
    fd = os.open(f"/proc/{node.zygote_os_pid}/fd/"
                 f"{find_fd(node.zygote_os_pid, observation.PAGE_NAME)}", os.O_RDONLY)
    try:
        page = json.loads(observation.read_page(fd)[1])
    finally:
        os.close(fd)
    on_page = [p for p in page["processes"] if p["pid"] == pid.serial][0]
    assert set(on_page) == keys_of(observation.PageRow) - {"memory"}

    def by_serial(value):
        if isinstance(value, otpy.Pid):
            return value.serial
        return [by_serial(v) for v in value] if isinstance(value, list) else value

    assert info["links"] == [otpy_tree.supervisor] and info["monitored_by"] == [otpy.self()]
    for key in keys_of(otpy.ProcessRow) - {"memory"}:
        assert by_serial(info[key]) == row[key] == on_page[key], key
    assert info["memory"] > 0 and row["memory"] > 0


def test_a_busy_process_still_shows_with_its_unread_mail():
    spinner = otpy.spawn(busy)
    for n in range(3):
        otpy.send(spinner, n)
    row = find(observer.snapshot()["tree"], pid=spinner.serial)
    # never read, never asked: the zygote and the status table tell it all
    assert row["status"] == "running" and row["inbound_bytes"] > 0
    assert row["os_pid"] == spinner.os_pid and row["message_queue_len"] == 0
    otpy.exit(spinner, "kill")


def test_json_and_once_from_another_program():
    with observed_program() as (_proc, info):
        out = observe(info["node"], "--json")
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        assert snap["node"] == info["node"] and snap["processes"] == 7
        top = find(snap["tree"], name="top")
        assert [c["child_id"] for c in top["children"]] == ["alpha", "sub", "pool"]
        alpha = top["children"][0]
        assert alpha["os_pid"] == info["alpha"]
        for key in ("name", "pid", "os_pid", "kind", "status", "restarts", "memory",
                    "message_queue_len", "children"):
            assert key in alpha

        out = observe(str(snap["os_pid"]), "--once")  # by the program's OS pid
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"node {info['node']}")
        assert any(line.startswith("top ") and "supervisor" in line for line in lines)
        assert any("├─ alpha" in line and str(info["alpha"]) in line for line in lines)
        assert any("│  └─ [inner]" in line for line in lines)
        assert any("└─ pool" in line for line in lines)
        assert any("   └─ [member]" in line for line in lines)


def test_json_and_once_after_a_sigkill_in_another_program():
    with observed_program() as (proc, info):
        os.kill(info["alpha"], signal.SIGKILL)
        proc.stdin.write("sync\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "synced\n"
        alpha = find(json.loads(observe(info["node"], "--json").stdout)["tree"], name="alpha")
        assert alpha["os_pid"] != info["alpha"]
        assert alpha["restarts"] == 1 and alpha["last_exit"] == "killed"
        line = next(line for line in observe(info["node"], "--once").stdout.splitlines()
                    if "├─ alpha" in line)
        assert line.split()[3:7] == [str(alpha["os_pid"]), "worker", "waiting", "1"]


def test_node_list_shows_both_programs_and_drops_one_killed():
    with observed_program() as (p1, one), observed_program() as (p2, two):
        listing = json.loads(observe("--list", "--json").stdout)
        by_node = {n["node"]: n for n in listing}
        assert {one["node"], two["node"], otpy.self().node} <= set(by_node)
        assert by_node[one["node"]]["os_pid"] == p1.pid
        assert by_node[one["node"]]["processes"] == 7
        assert "-c" in by_node[one["node"]]["cmdline"]
        text = observe().stdout
        assert one["node"] in text and two["node"] in text and "PROCESSES" in text

        zygote = by_node[one["node"]]["zygote_os_pid"]
        os.kill(p1.pid, signal.SIGKILL)
        assert wait_gone([p1.pid, zygote]) == []
        nodes = {n.node for n in observer.list_nodes()}
        assert one["node"] not in nodes and two["node"] in nodes
        out = observe(one["node"], "--json")
        assert out.returncode == 1 and f"no running otpy node '{one['node']}'" in out.stderr


def test_unknown_node_is_an_error_that_names_it():
    out = observe("nosuchnode", "--once")
    assert out.returncode == 1
    assert "no running otpy node 'nosuchnode'" in out.stderr
    with pytest.raises(observer.NodeNotFound, match="nosuchnode"):
        observer.snapshot("nosuchnode")


def test_the_live_view_refuses_without_a_terminal():
    out = observe(otpy.self().node)
    assert out.returncode == 2 and "needs a terminal" in out.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_another_user_sees_no_node_and_cannot_read_ours():
    node = observer.find_node()
    page = f"/proc/{node.zygote_os_pid}/fd/{find_fd(node.zygote_os_pid, 'otpy-observe')}"
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a process of another OS user
        try:
            os.setgid(65534)
            os.setuid(65534)
            seen = [n.node for n in observer.list_nodes()]
            try:
                observer.NodeReader(node)
                opened = True
            except observer.NodeNotFound:
                opened = False
            try:
                os.close(os.open(page, os.O_RDONLY))
                page_denied = False
            except PermissionError:
                page_denied = True
            os.write(w, json.dumps({"seen": seen, "opened": opened,
                                    "page_denied": page_denied}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = json.loads(f.read())
    os.waitpid(child, 0)
    assert result == {"seen": [], "opened": False, "page_denied": True}


CPU_BEFORE_THE_NODE = textwrap.dedent("""
    import time, otpy
    from otpy import observer

    began = time.process_time()
    while time.process_time() - began < 1.0:  # a second of CPU before the node starts
        pass
    otpy.self()
    program = [p for p in observer.snapshot()["tree"] if p["program"]][0]
    print(program["cpu_percent"], flush=True)
""")


def test_the_programs_first_cpu_percent_counts_from_its_own_start():
    # the program's CPU time includes what it ran before its node: over the
    # node's life alone it would read as several CPUs' worth
    out = subprocess.run([sys.executable, "-c", CPU_BEFORE_THE_NODE], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) <= 150.0
