"""A pool handle is picklable and works from threads and other processes. (Moved
from test_pool.py.)"""

from __future__ import annotations

import pickle

import otpy
import pytest
from otpy_pool import Pool

from helpers import expect, in_thread
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def _use_pool(pool: Pool, report_to: otpy.Pid) -> None:
    otpy.send(report_to, ("from_process", pool.execute("notes", session="shared"),
                          pool.execute("ping")))


def test_a_handle_is_picklable_and_works_from_threads_and_other_processes():
    pool = start(size=2, name="shared_pool")
    pool.execute("add", "x", session="shared")
    copy = pickle.loads(pickle.dumps(pool))
    assert copy == pool
    otpy.spawn(_use_pool, copy, otpy.self())
    assert expect(lambda m: m[0] == "from_process")[1:] == (["x"], ("pong", "notes", None))
    joins = [in_thread(lambda i=i: [pool.execute("add", f"{i}.{n}", session=f"t{i}")
                                    for n in range(5)]) for i in range(4)]
    assert [join() for join in joins] == [[1, 2, 3, 4, 5]] * 4
    for i in range(4):
        assert pool.execute("notes", session=f"t{i}") == [f"{i}.{n}" for n in range(5)]
    pool.stop()
