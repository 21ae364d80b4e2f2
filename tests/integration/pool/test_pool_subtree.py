"""The pool's subtree: under a supervisor, a server killed and replaced, the
observer's view, stop. (Moved from test_pool.py.)"""

from __future__ import annotations

import subprocess
import sys

import otpy
import pytest
from otpy.testing import wait_for
from otpy_pool import Pool, PoolError

from helpers import in_thread, sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import Notes, event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def test_under_a_supervisor_by_name_and_a_server_kill(otpy_tree):
    otpy_tree.start_child(Pool.child_spec(Notes, size=2, name="programs"))
    pool = Pool("programs")
    assert pool.execute("add", "kept", session="s") == 1
    worker = pool.worker_of("s")
    sigkill(otpy.whereis("programs"))
    # the replacement adopts the workers alive, with their sessions and replay logs
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.worker_of("s") == worker and len(pool.workers()) == 2
    sigkill(worker)
    assert pool.execute("notes", session="s") == ["kept"]
    pool.stop()


def test_the_pool_shows_in_the_observer():
    from otpy.observer import snapshot

    pool = start(size=2, name="observed")
    with pool.checkout():
        def labelled():  # the label is written at most every 50 ms (a message each)
            rows = list(_flatten(snapshot()["tree"]))
            server = next(r for r in rows if r["name"] == "observed")
            return (rows, server) if "in use 1/2" in server["behaviour"] else None
        rows, server = wait_for(labelled)
        # the pool's supervisor holds the workers' supervisor, which holds the workers
        pool_sup = next(r for r in rows if server in r["children"])
        workers_sup = next(r for r in pool_sup["children"] if r["name"] == "observed.workers")
        assert sorted(r["pid"] for r in workers_sup["children"]) == \
            sorted(p.serial for p in pool.workers())
        assert all(r["behaviour"] == "otpy_pool.Worker:Notes" for r in workers_sup["children"])
        assert pool_sup["name"] == "observed.sup"  # named after the pool
        # and as text, as docs/pool.md says (--once; the live view has the same columns)
        once = subprocess.run([sys.executable, "-m", "otpy.observer", otpy.self().node, "--once"],
                              capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stderr
        lines = once.stdout.splitlines()
        assert "BEHAVIOUR" in lines[2]
        assert any(line.startswith("observed.sup ") and line.endswith("Supervisor")
                   for line in lines)
        assert any("└─ observed " in line and line.endswith("otpy_pool.Pool in use 1/2")
                   for line in lines)
        assert sum(line.endswith("otpy_pool.Worker:Notes") for line in lines) == 2
    pool.stop()


def _flatten(rows):
    for row in rows:
        yield row
        yield from _flatten(row.get("children", []))


def test_stop_leaves_nothing_behind(otpy_tree):
    pool = start(size=2, name="short")
    os_pids = [p.os_pid for p in pool.workers()]
    pool.stop()
    assert otpy.whereis("short") is None
    assert otpy_tree.processes() == [otpy_tree.supervisor] or \
        all(p.os_pid not in os_pids for p in otpy_tree.processes())
    with pytest.raises(PoolError, match="not running"):
        pool.execute("ping")


def test_killing_the_pool_server_never_hangs_a_waiting_caller():
    pool = start(size=1, name="waited")
    pool.subscribe()
    with pool.checkout():
        waiting = in_thread(pool.execute, "ping")
        event("queued")
        sigkill(otpy.whereis("waited"))
        try:  # served by the replacement, or a clear error: never a hang
            assert waiting() == ("pong", "notes", None)
        except PoolError:
            pass
    # the tree comes back whole
    assert len(pool.workers()) == 1 and pool.status().size == 1
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()
