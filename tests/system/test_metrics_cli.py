"""``python -m otpy.observer NODE --prometheus ADDR:PORT``: another program's
node served to Prometheus with no change to that program; the server ends
when the program does, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import helpers
from helpers import DEADLINE, ctrl_c_restored
from metrics_helpers import scrape, value

# A program with a tree whose child it SIGKILLs when told; it reports what
# it sees itself (processes, the child's restarts), then waits for the next line.
PROGRAM = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from otpy import observer
    from servers import Counter

    otpy.Supervisor.start_link([Counter.child_spec(name="steady"),
                                Counter.child_spec(id="crashy")], name="app")

    def report():
        rows, stack = [], list(observer.snapshot()["tree"])
        while stack:
            row = stack.pop()
            rows.append(row)
            stack += row["children"]
        restarts = [r["restarts"] for r in rows if r["child_id"] == "crashy"][0]
        print(json.dumps({"node": otpy.self().node, "processes": len(otpy.processes()),
                          "restarts": restarts}), flush=True)

    report()
    for line in sys.stdin:
        child = [c.pid for c in otpy.Supervisor.which_children("app") if c.id == "crashy"][0]
        ref = otpy.monitor(child)
        os.kill(child.os_pid, signal.SIGKILL)
        otpy.receive(timeout=30, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
        otpy.Supervisor.which_children("app")  # answered after the restart
        report()
""")


@contextlib.contextmanager
def program():
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(helpers.TESTS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc, json.loads(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()


@contextlib.contextmanager
def exporter(*args: str):
    """Start the CLI; yield (process, the URL it serves at)."""
    proc = subprocess.Popen([sys.executable, "-m", "otpy.observer", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_restored)
    try:
        line = proc.stdout.readline()
        found = re.search(r"serving node \w+ at (http://\S+/metrics)", line)
        assert found, line + proc.stderr.read()
        yield proc, found.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()
        proc.stderr.close()


def refused(url: str) -> bool:
    host, port = re.search(r"//([\d.]+):(\d+)/", url).groups()
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_another_programs_node_is_served_until_it_ends():
    with program() as (proc, first):
        node = first["node"]
        with exporter(node, "--prometheus", "127.0.0.1:0") as (cli, url):
            before = scrape(url)
            assert value(before, "otpy_processes") == first["processes"]
            proc.stdin.write("crash\n")
            proc.stdin.flush()
            after_crash = json.loads(proc.stdout.readline())
            after = scrape(url)
            assert value(after, "otpy_processes") == after_crash["processes"]
            assert value(after, "otpy_supervisor_restarts_total", supervisor="app",
                         child="crashy") == after_crash["restarts"] == 1
            assert value(after, "otpy_exits_total", reason="killed") == 1
            assert value(after, "otpy_spawns_total") - value(before, "otpy_spawns_total") == 1
            proc.stdin.close()  # the program ends, and so does the exporter
            assert cli.wait(timeout=DEADLINE) == 0
            assert f"node {node} ended" in cli.stdout.read()
            assert refused(url)


def test_ctrl_c_stops_the_exporter_and_the_program_carries_on():
    with program() as (proc, first):
        with exporter(first["node"], "--prometheus", "127.0.0.1:0") as (cli, url):
            scrape(url)
            cli.send_signal(signal.SIGINT)
            assert cli.wait(timeout=DEADLINE) == 0
            assert refused(url)
        proc.stdin.write("crash\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["restarts"] == 1


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:http", ":9464",
                                    "127.0.0.1:70000"])
def test_a_bad_listen_address_is_refused_naming_it(listen):
    out = subprocess.run([sys.executable, "-m", "otpy.observer", "x", "--prometheus", listen],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--prometheus takes ADDR:PORT" in out.stderr and repr(listen) in out.stderr


def test_an_address_that_cannot_be_listened_on_and_an_unknown_node_are_named():
    with program() as (_proc, first):
        out = subprocess.run([sys.executable, "-m", "otpy.observer", first["node"],
                              "--prometheus", "no-such-host.invalid:0"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "cannot listen on no-such-host.invalid:0" in out.stderr
    out = subprocess.run([sys.executable, "-m", "otpy.observer", "no-such-node",
                          "--prometheus", "127.0.0.1:0"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "no running otpy node 'no-such-node'" in out.stderr


def test_without_the_extra_the_exporter_names_the_install_command():
    with program() as (_proc, first):
        code = ("import runpy, sys; sys.modules['prometheus_client'] = None; "
                f"sys.argv = ['otpy.observer', {first['node']!r}, '--prometheus', "
                "'127.0.0.1:0']; runpy.run_module('otpy.observer', run_name='__main__')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip() == ("otpy.observer: otpy.metrics.serve needs prometheus_client, "
                                  "which is not installed: pip install 'otpy[metrics]'")


POOL_PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from otpy_pool import Pool
    from pool_workers import Notes

    pool = Pool.start_link(Notes, size=2, name="outside")
    for note in ("a", "b", "c"):
        pool.execute("add", note, session="s")
    try:
        pool.execute("fail", "k")
    except KeyError:
        pass
    status = pool.status()
    print(json.dumps({"node": otpy.self().node, "total": status.total_commands,
                      "errors": status.errors, "sessions": status.sessions}), flush=True)
    sys.stdin.read()  # until the test closes it
""")


def test_another_programs_pool_is_served_with_no_change_to_it():
    """The exporter outside the program finds otpy_pool's figures through
    otpy.metrics' entry points: the program imports nothing for it."""
    proc = subprocess.Popen([sys.executable, "-c", POOL_PROGRAM, str(helpers.TESTS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        status = json.loads(proc.stdout.readline())
        with exporter(status["node"], "--prometheus", "127.0.0.1:0") as (_cli, url):
            figures = scrape(url)
        counted = {"ok": 0.0, "error": 0.0, "crashed": 0.0}
        for (name, labels), n in figures.items():
            if name == "otpy_pool_commands_total" and dict(labels)["pool"] == "outside":
                counted[dict(labels)["outcome"]] += n
        assert sum(counted.values()) == status["total"] == 4
        assert counted["error"] + counted["crashed"] == status["errors"] == 1
        assert value(figures, "otpy_pool_command_duration_seconds_count", pool="outside",
                     command="add") == 3
        assert value(figures, "otpy_pool_sessions", pool="outside") == status["sessions"]
    finally:
        proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()
