"""What the pool's integration tests share: a pool of Notes workers, and no
PoolEvent crossing from one test to the next (not imported by workers)."""

from __future__ import annotations

import pytest
from otpy import lowlevel
from otpy_pool import Pool, PoolEvent

from pool_workers import Notes


def start(**opts) -> Pool:
    """A pool of Notes workers, two unless ``size`` says otherwise."""
    opts.setdefault("size", 2)
    return Pool.start_link(Notes, **opts)


@pytest.fixture
def no_stale_events():
    """Events are messages to the test's own process: none crosses tests."""
    lowlevel.flush(lambda m: isinstance(m, PoolEvent))
    yield
    lowlevel.flush(lambda m: isinstance(m, PoolEvent) or
                   (type(m) is tuple and m[:1] in (("holding",), ("ran",), ("health_checked",))))
