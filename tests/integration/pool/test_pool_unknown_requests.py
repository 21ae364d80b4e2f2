"""A request the pool's server or a worker does not know is answered with
an error naming it, never with nothing, and neither of them stops."""

from __future__ import annotations

import otpy
import pytest

from otpy_pool import Pool

from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers


def test_an_unknown_request_is_answered_with_an_error():
    pool = Pool.start_link(Notes, size=1)
    server, worker = otpy.whereis(pool.name), pool.workers()[0]
    for process in (server, worker):
        outcome, error = otpy.call(process, ("no_such_request", 1))
        assert outcome == "error" and isinstance(error, ValueError)
        assert "no_such_request" in str(error)
        assert otpy.call(process, "not a tuple")[0] == "error"
    outcome, error = otpy.call(server, ("status", "an argument too many"))
    assert outcome == "error" and isinstance(error, TypeError)
    assert pool.workers() == [worker] and otpy.whereis(pool.name) == server
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()
