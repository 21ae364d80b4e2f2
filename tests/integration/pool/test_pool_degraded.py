"""Degraded, never dead (issue 22, item 1): a worker that cannot start is
retried with backoff while the others serve; with none alive, callers get
PoolUnavailable at once; the pool returns to full size by itself."""

from __future__ import annotations

import os
import traceback

import otpy
import pytest
from otpy.testing import wait_registered
from otpy_pool import Pool, PoolError, PoolUnavailable

from helpers import expect_down, sigkill
from pool_workers import Notes, event

pytestmark = pytest.mark.layer("full")  # real pool workers

FAST = (0.01, 0.05)  # restart_backoff: retries come quickly in tests


def refusing(tree, **opts) -> tuple[Pool, str]:
    """A pool whose workers' init fails while the returned flag file exists."""
    flag = os.path.join(tree.tmp_path, "refuse")
    pool = Pool.start_link(Notes, kwargs={"fail_if": flag}, restart_backoff=FAST, **opts)
    pool.subscribe()
    return pool, flag


def test_a_worker_that_cannot_start_is_retried_while_the_others_serve(otpy_tree):
    pool, flag = refusing(otpy_tree, size=2)
    pool.execute("add", "kept", session="s")
    open(flag, "w").close()
    victim = next(w for w in pool.workers() if w != pool.worker_of("s"))
    sigkill(victim)
    for _ in range(8):  # more failures than any restart intensity allows
        failed = event("worker_start_failed")
        assert isinstance(failed.detail, RuntimeError) and "init refused" in str(failed.detail)
    assert pool.execute("add", "more", session="s") == 2  # the live worker serves
    assert pool.execute("ping") == ("pong", "notes", None)
    status = pool.status()
    assert (status.size, status.workers, status.starting, status.degraded) == (2, 1, 1, True)
    os.remove(flag)  # the service is back
    event("worker_started")
    status = pool.status()
    assert (status.workers, status.starting, status.degraded) == (2, 0, False)
    assert len(pool.workers()) == 2
    pool.stop()


def test_with_no_worker_alive_callers_get_pool_unavailable_at_once(otpy_tree):
    pool, flag = refusing(otpy_tree, size=1, checkout_timeout=60)
    pool.execute("add", "kept", session="s")
    open(flag, "w").close()
    sigkill(pool.workers()[0])
    event("worker_start_failed")
    for run in (lambda: pool.execute("ping"), lambda: pool.execute("notes", session="s"),
                lambda: pool.execute_many("ping", [()])):
        with pytest.raises(PoolUnavailable, match="init refused") as info:
            run()  # at once: not after the 60 s checkout timeout
        assert isinstance(info.value, PoolError)
        assert isinstance(info.value.cause, RuntimeError)
    with pytest.raises(PoolUnavailable):
        with pool.checkout():
            pass
    os.remove(flag)
    event("worker_started")
    assert pool.execute("notes", session="s") == ["kept"]  # replayed on the new worker
    pool.stop()


def test_callers_waiting_when_the_last_worker_dies_get_pool_unavailable(otpy_tree):
    pool, flag = refusing(otpy_tree, size=1, checkout_timeout=60)
    me = otpy.self()
    with pool.checkout() as held:
        otpy.spawn(lambda: otpy.send(me, ("outcome", _outcome(pool))))
        event("queued")
        open(flag, "w").close()
        sigkill(held.pid)
        _, outcome = expect_outcome()
        assert isinstance(outcome, PoolUnavailable)
    os.remove(flag)
    pool.stop()


def _outcome(pool: Pool):
    try:
        return pool.execute("ping")
    except PoolError as exc:
        return exc


def expect_outcome():
    return otpy.receive(timeout=10, match=lambda m: type(m) is tuple and m[:1] == ("outcome",))


def test_a_new_pool_whose_first_workers_cannot_start_fails_with_the_inits_error(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "refuse")
    open(flag, "w").close()
    before = otpy.processes()
    with pytest.raises(otpy.StartError, match="init refused") as info:
        Pool.start_link(Notes, kwargs={"fail_if": flag}, size=2, name="never")
    assert otpy.processes() == before and otpy.whereis("never") is None
    text = "".join(traceback.format_exception(info.value))
    # the init's exception itself, with the file and line that raised it
    assert isinstance(info.value.reason, RuntimeError)
    assert "pool_workers.py" in text and 'raise RuntimeError(f"init refused' in text
    assert "StartError(" not in str(info.value) and "\\\\" not in str(info.value)


def test_a_server_that_keeps_crashing_still_stops_the_pool(otpy_tree):
    """Restart intensity is for the pool's own server, not for workers' inits."""
    sup = otpy_tree.start_child(Pool.child_spec(Notes, size=1, name="fragile",
                                                restart="temporary"))
    ref = otpy.monitor(sup)
    for _ in range(6):  # more than max_restarts=5 within 5 s
        sigkill(wait_registered("fragile"))  # each replacement, once registered
    assert expect_down(ref).reason == "shutdown"


@pytest.mark.parametrize("value, error", [
    ((0, 1), ValueError), ((1, 0.5), ValueError), ((0.1,), TypeError), ("fast", TypeError),
    ((0.1, float("inf")), ValueError), ((0.1, None), ValueError)])
def test_a_bad_restart_backoff_is_named(value, error):
    with pytest.raises(error, match="restart_backoff"):
        Pool.start_link(Notes, size=1, restart_backoff=value)
