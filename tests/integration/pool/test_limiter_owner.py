"""The rate limiter's owner (``_limiter_owner``): sweeps that keep memory
bounded, and its supervision (SIGKILL, start_link and stop)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import otpy
from otpy.testing import wait_for
from otpy_pool import LimiterNotRunning, RateLimiter

from helpers import DEADLINE, expect, expect_down
from limiters import ALGORITHMS, LONG, start, wait_for_sweep

# ---- bounded memory ---------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expired_buckets_are_cleaned_up_periodically(algorithm):
    api = start(algorithm=algorithm, cleanup_interval=0.05)
    window = 0.5
    last = None
    for n in range(2000):
        last = api.hit(("user", n), limit=10, window=window)
    assert api.stats()["keys"] >= 1  # at least the last one's bucket is alive
    # Wait for the clock to pass the buckets' expiry (the behaviour under
    # test is about time), then for a sweep after it, within a deadline.
    wait_for(lambda: time.time() > last.reset_at, timeout=DEADLINE)
    stats = wait_for_sweep(api)
    assert stats["sweeps"] >= 1
    assert (stats["keys"], stats["buckets"]) == (0, 0)


# ---- the owner is supervised ------------------------------------------------------------

def test_sigkill_of_the_owner_callers_never_hang_and_the_replacement_starts_empty():
    api = start()
    me = otpy.self()
    for _ in range(3):
        api.hit("k", limit=3, window=LONG)
    assert not api.hit("k", limit=3, window=LONG).allowed

    def caller():
        handle = RateLimiter("api")
        otpy.send(me, "running")
        n = sum(1 for _ in range(300) if handle.hit(("c", os.getpid()), 1000, LONG).allowed)
        otpy.send(me, ("done", n))

    pids = [otpy.spawn(caller) for _ in range(2)]
    for _ in pids:
        expect(lambda m: m == "running")
    owner = otpy.whereis("api")
    ref = otpy.monitor(owner)
    os.kill(owner.os_pid, signal.SIGKILL)
    expect_down(ref)
    done = [expect(lambda m: m[:1] == ("done",), timeout=DEADLINE * 3)[1] for _ in pids]
    assert done == [300, 300]  # every hit answered, by the old owner or the replacement
    # the replacement registers its name as it is spawned and publishes its table
    # in its init: wait for the name, then for an answer (given after its init)
    wait_for(lambda: otpy.whereis("api") not in (None, owner), timeout=DEADLINE)
    api.stats()
    fresh = api.hit("k", limit=3, window=LONG)
    assert fresh.allowed and fresh.count == 1  # the replacement starts with no buckets


def test_start_link_stop_and_a_stopped_limiter():
    api = RateLimiter.start_link("api", algorithm="sliding_window")
    assert api.hit("k", 1, 1.0).allowed
    with pytest.raises(otpy.AlreadyStarted):
        RateLimiter.start_link("api")
    api.stop()
    assert otpy.whereis("api") is None
    with pytest.raises(LimiterNotRunning):
        RateLimiter("api", timeout=0.2).hit("k", 1, 1.0)
