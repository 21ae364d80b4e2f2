"""Helpers of the rate limiter's tests (test_limiter*.py)."""

from __future__ import annotations

from otpy.testing import wait_for
from otpy_pool import RateLimiter

import helpers
from helpers import DEADLINE

ALGORITHMS = ["fixed_window", "sliding_window", "token_bucket"]
# A window so long that no fixed-window boundary (they are aligned on epoch
# time) can fall between two hits of one test, except with odds of ~1e-8.
LONG = 1e6


def start(name="api", **options):
    """A limiter under the test's tree (stopped with it)."""
    helpers.CURRENT_TREE.start_child(RateLimiter.child_spec(name, **options))
    return RateLimiter(name)


def wait_for_sweep(api):
    """stats() once no bucket is left, polled within a deadline (sweeps run
    on the owner's timer; nothing to wait on but the outcome)."""
    def swept():
        stats = api.stats()
        return None if stats["buckets"] else stats
    return wait_for(swept, timeout=DEADLINE)
