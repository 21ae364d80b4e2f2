"""A worker the pool kills on purpose is not a crash (issue 21, item 6): a
command past its deadline, a health check that never answers, a checkout
whose state is unknown, a pool stop. No error-level event, no crash report;
one warning line per kill (the caller's own error says the rest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import TESTS

PROGRAM = textwrap.dedent("""
    import os, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    import otpy
    from otpy_pool import CommandTimeout, Pool, PoolEvent
    from pool_workers import Notes

    me = otpy.self()
    pool = Pool.start_link(Notes, size=1, health_interval=0.05, health_timeout=0.3,
                           name="logged")
    pool.subscribe()

    def started():
        otpy.receive(timeout=10, match=lambda m: isinstance(m, PoolEvent)
                     and m.kind == "worker_started")

    try:  # a command past its deadline
        pool.execute("hold", me, "t", timeout=0.2)
    except CommandTimeout:
        pass
    started()
    try:  # a checkout body that raises: the worker's state is unknown
        with pool.checkout():
            raise KeyError("body")
    except KeyError:
        pass
    started()
    with tempfile.TemporaryDirectory() as tmp:  # a health check that never answers
        flag = os.path.join(tmp, "hang")
        pool.execute("set_hung_health_if", flag, session="s")
        open(flag, "w").close()
        otpy.receive(timeout=10, match=lambda m: isinstance(m, PoolEvent)
                     and m.kind == "health_failed")
        started()
    pool.stop()
""")


def test_workers_killed_on_purpose_log_a_warning_and_no_crash_report():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_LOG")}
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(TESTS)], capture_output=True,
                         text=True, timeout=60,
                         env={**env, "OTPY_LOG": "json", "OTPY_LOG_LEVEL": "debug"})
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert [e for e in events if e["level"] in ("error", "critical")] == []
    kills = [e for e in events if e["event"] == "pool worker killed"]
    assert [(e["level"], e["why"]) for e in kills] == [
        ("warning", "command_timeout"), ("warning", "checkout_replaced"),
        ("warning", "health_check_timeout")]
    exits = [e["reason"] for e in events if e["event"] == "process exited"]
    for why in ("command_timeout", "checkout_replaced", "health_check_timeout"):
        assert f"('shutdown', '{why}')" in exits
