"""otpy.metrics over HTTP: a tree whose child crashes and restarts, scraped
from ``serve()`` and parsed by prometheus_client's parser; the figures agree
with otpy.processes(), the supervisor's restarts and the observer's snapshot.

The node is the test program's, shared by every test, and its counters only
grow: each test checks what its own processes changed between two scrapes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import otpy
import otpy.metrics
from helpers import expect_down
from metrics_helpers import parse, scrape, series, value
from otpy import observer
from otpy.testing import wait_for
from servers import Counter


@pytest.fixture
def server():
    with otpy.metrics.serve(0) as running:
        yield running


def kill(pid: otpy.Pid) -> None:
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)


def rows(snap: dict) -> list[dict]:
    out = []

    def walk(level):
        for row in level:
            out.append(row)
            walk(row["children"])

    walk(snap["tree"])
    return out


def test_a_crash_and_its_restart_as_scraped(otpy_tree, server):
    before = scrape(server.url)
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(name="steady"), Counter.child_spec(id="crashy")],
        id="app", name="app"))
    crashy = dict((c.id, c.pid) for c in otpy.Supervisor.which_children("app"))["crashy"]
    kill(crashy)
    otpy.Supervisor.which_children("app")  # answered after the restart
    after = scrape(server.url)
    snap = observer.snapshot()

    assert value(after, "otpy_processes") == len(otpy.processes()) == snap["processes"]
    restarts = {child: value(after, "otpy_supervisor_restarts_total", 0.0, supervisor="app",
                             child=child)
                - value(before, "otpy_supervisor_restarts_total", 0.0, supervisor="app",
                        child=child)
                for child in ("crashy", "steady")}
    shown = {r["child_id"]: r["restarts"] for r in rows(snap) if r["supervisor"] is not None}
    assert restarts == {"crashy": shown["crashy"], "steady": shown["steady"]} == {
        "crashy": 1, "steady": 0}
    # app, steady, crashy, and crashy again
    assert value(after, "otpy_spawns_total") - value(before, "otpy_spawns_total") == 4
    assert value(after, "otpy_spawns_total") == snap["counts"]["spawns"]
    exits = {cls: value(after, "otpy_exits_total", reason=cls)
             - value(before, "otpy_exits_total", reason=cls)
             for cls in ("normal", "shutdown", "killed", "signal", "exit", "error")}
    assert exits == {"normal": 0, "shutdown": 0, "killed": 1, "signal": 0, "exit": 0,
                     "error": 0}
    assert value(after, "otpy_node_start_time_seconds") == pytest.approx(
        snap["taken_at"] - snap["uptime"], abs=1.0)


def test_giving_up_is_scraped_per_supervisor(otpy_tree, server):
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(id="c")], id="fragile", name="fragile", max_restarts=0))
    before = value(scrape(server.url), "otpy_supervisor_restart_intensity_reached_total", 0.0,
                   supervisor="fragile")
    first = otpy.whereis("fragile")
    ref = otpy.monitor(first)
    kill(otpy.Supervisor.which_children("fragile")[0].pid)
    assert expect_down(ref).reason == "shutdown"
    otpy.Supervisor.which_children(otpy_tree.supervisor)  # "fragile" is back
    after = scrape(server.url)
    assert value(after, "otpy_supervisor_restart_intensity_reached_total",
                 supervisor="fragile") - before == 1


def sink() -> None:
    otpy.receive(match=lambda m: m == "go")  # keeps every other message in its mailbox


def test_mailboxes_by_label_never_by_pid(otpy_tree, server):
    sinks = [otpy.spawn_link(sink) for _ in range(20)]
    named = otpy.spawn_link(lambda: (otpy.register("deep", otpy.self()), sink()))
    for i, pid in enumerate(sinks):
        for _ in range(i % 3 + 1):
            otpy.send(pid, "mail")
    wait_for(lambda: otpy.whereis("deep") is not None)
    for _ in range(7):
        otpy.send(named, "mail")
    wait_for(lambda: otpy.process_info(named)["message_queue_len"] == 7)
    wait_for(lambda: all(otpy.process_info(p)["message_queue_len"] == i % 3 + 1
                         for i, p in enumerate(sinks)))
    figures = scrape(server.url)

    assert value(figures, "otpy_mailbox_messages") >= 7 + sum(i % 3 + 1 for i in range(20))
    per_process = series(figures, "otpy_process_mailbox_messages")
    assert per_process[frozenset({("process", "deep")})] == 7
    # 20 unnamed processes with no behaviour share one label, and show their largest
    assert per_process[frozenset({("process", "-")})] == 3
    assert len(per_process) <= otpy.metrics.LARGEST
    labels = {name for (_, labelset) in figures for name, _ in labelset}
    assert labels <= {"reason", "supervisor", "child", "process"}
    for pid in sinks + [named]:
        otpy.send(pid, "go")


def hog(report_to: otpy.Pid) -> None:
    held = b"x" * (64 << 20)  # written, so resident and its own
    otpy.register("hog", otpy.self())
    otpy.send(report_to, "held")
    otpy.receive()
    del held


def test_the_largest_processes_memory(otpy_tree, server):
    otpy.spawn_link(hog, otpy.self())
    otpy.receive(timeout=10, match=lambda m: m == "held")
    figures = scrape(server.url)
    rss = series(figures, "otpy_process_resident_memory_bytes")
    unique = series(figures, "otpy_process_unique_memory_bytes")
    label = frozenset({("process", "hog")})
    assert rss[label] >= 64 << 20 and unique[label] >= 64 << 20
    assert rss[label] >= unique[label]
    assert rss.keys() == unique.keys() and len(rss) <= otpy.metrics.LARGEST
    otpy.exit(otpy.whereis("hog"), "kill")


def test_an_applications_own_registry(otpy_tree):
    collector = otpy.metrics.NodeCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        figures = parse(generate_latest(registry).decode())
        assert value(figures, "otpy_processes") == len(otpy.processes())
        assert collector.node == otpy.self().node
        names = {f.name for f in collector.describe()}
        assert {"otpy_spawns", "otpy_exits", "otpy_supervisor_restarts"} <= names
    finally:
        registry.unregister(collector)
        collector.close()


@pytest.mark.parametrize("port", [-1, 65536, "9464", True, 1.5, None])
def test_a_bad_port_is_refused_naming_it(port):
    with pytest.raises(ValueError, match=f"port must be .* not {port!r}"):
        otpy.metrics.serve(port)


@pytest.mark.parametrize("addr", ["", None, 127])
def test_a_bad_address_is_refused_naming_it(addr):
    with pytest.raises(ValueError, match="addr must be"):
        otpy.metrics.serve(0, addr)


def test_an_address_that_cannot_be_listened_on_is_named(otpy_tree):
    with pytest.raises(OSError, match=r"cannot listen on no-such-host\.invalid:0"):
        otpy.metrics.serve(0, "no-such-host.invalid")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            otpy.metrics.serve(port)


def test_an_unknown_node_is_refused_at_once():
    with pytest.raises(observer.NodeNotFound, match="no-such-node"):
        otpy.metrics.serve(0, node="no-such-node")


def test_close_frees_the_port_and_the_thread(otpy_tree):
    threads = set(threading.enumerate())
    server = otpy.metrics.serve(0)
    host, port = server.address
    assert (host, server.url) == ("127.0.0.1", f"http://127.0.0.1:{port}/metrics")
    scrape(server.url)
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()
    wait_for(lambda: set(threading.enumerate()) <= threads)
