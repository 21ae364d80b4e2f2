"""status() and the events subscribers receive. (Moved from test_pool.py.)"""

from __future__ import annotations

import pytest
from otpy import lowlevel
from otpy_pool import PoolEvent, PoolStatus

from helpers import sigkill
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)
from pool_workers import event

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def test_status_counts():
    pool = start(size=2)
    assert pool.status() == PoolStatus(size=2, overflow=0, idle=2, busy=0, queued=0,
                                       sessions=0, total_commands=0, errors=0, timeouts=0,
                                       worker_restarts=0, sessions_recovered=0,
                                       sessions_lost=0, workers=2)
    pool.execute("add", "x", session="a")
    with pytest.raises(KeyError):
        pool.execute("fail", "k")
    with pool.checkout():
        status = pool.status()
        assert (status.idle, status.busy, status.sessions) == (1, 1, 1)
    sigkill(pool.worker_of("a"))
    pool.execute("notes", session="a")
    status = pool.status()
    assert (status.total_commands, status.errors, status.worker_restarts,
            status.sessions_recovered) == (3, 1, 1, 1)
    pool.stop()


def test_events_reach_subscribers_until_they_unsubscribe():
    pool = start(size=1)
    pool.subscribe()
    pool.execute("ping", session="s")
    bound = event("session_bound")
    assert bound.session == "s" and bound.worker == pool.workers()[0]
    pool.execute("ping")  # claimed (one round trip, the server not asked): no event
    pool.workers()  # (the server handled whatever that command sent it before this answer)
    assert lowlevel.flush(lambda m: isinstance(m, PoolEvent) and
                          m.kind in ("checkout", "checkin")) == 0
    with pool.checkout():
        pass
    assert event("checkout").worker == event("checkin").worker == bound.worker
    sigkill(bound.worker)
    assert event("worker_exited").worker == bound.worker
    assert event("worker_started").worker != bound.worker
    pool.unsubscribe()
    pool.execute("ping")
    pool.workers()  # every event of that command was sent before this answer
    assert lowlevel.flush(lambda m: isinstance(m, PoolEvent)) == 0
    pool.stop()
