"""The limiter's arithmetic against models (fake time, in nanoseconds), and
its exactness with real processes hitting one key at once."""

from __future__ import annotations

import os
import signal
import time
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otpy
from otpy import lowlevel
from otpy_pool import RateLimiter
from otpy_pool._limiter_algorithms import Buckets
from otpy_pool._limiter_shared import (CONTROL_BYTES, GROW, Control, TableGone, TableOwner, decide,
                                      digest)

from helpers import DEADLINE, expect, expect_down

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
W = 1_000  # the window, in (fake) nanoseconds
START = 10 * W

hits = st.lists(st.tuples(st.integers(0, 2 * W), st.integers(1, 6), st.booleans()),
                min_size=1, max_size=60)  # (gap since the previous hit, cost, count or inspect)


@SETTINGS
@given(limit=st.integers(1, 10), hits=hits)
def test_fixed_window_counts_per_aligned_window(limit, hits):
    buckets = Buckets("fixed_window")
    now, used = START, {}
    for gap, cost, count in hits:
        now += gap
        index = now // W
        before = used.get(index, 0)
        out = buckets.hit("k", limit, W, cost, now, count)
        assert out.allowed == (before + cost <= limit)
        if out.allowed and count:
            used[index] = before + cost
        assert out.count == used.get(index, 0)
        assert out.remaining == limit - out.count
        assert out.reset_at_ns == (index + 1) * W
        if out.allowed:
            assert out.retry_after_ns == 0
        else:
            assert 0 < out.retry_after_ns <= W
    assert all(total <= limit for total in used.values())


@SETTINGS
@given(limit=st.integers(1, 10), hits=hits)
def test_sliding_window_never_holds_more_than_limit_in_any_window(limit, hits):
    buckets = Buckets("sliding_window")
    now, log = START, []  # (time, cost) of every admitted hit
    for gap, cost, count in hits:
        now += gap
        live = sum(c for t, c in log if now - t < W)  # a hit exactly W old no longer counts
        out = buckets.hit("k", limit, W, cost, now, count)
        assert out.allowed == (live + cost <= limit)
        if out.allowed and count:
            log.append((now, cost))
            live += cost
        assert out.count == live
        if not out.allowed and cost <= limit:
            # retry_after is exactly when enough has expired for this cost to fit
            later = now + out.retry_after_ns
            assert sum(c for t, c in log if later - t < W) + cost <= limit
            earlier = later - 1
            assert sum(c for t, c in log if earlier - t < W) + cost > limit
    for t, _ in log:  # any window ending at an admitted hit holds at most `limit`
        assert sum(c for u, c in log if 0 <= t - u < W) <= limit


@SETTINGS
@given(limit=st.integers(1, 10), hits=hits)
def test_token_bucket_is_the_exact_refill_model(limit, hits):
    buckets = Buckets("token_bucket")
    now, tokens, last = START, Fraction(limit), START
    for gap, cost, count in hits:
        now += gap
        tokens = min(Fraction(limit), tokens + Fraction((now - last) * limit, W))
        last = now
        out = buckets.hit("k", limit, W, cost, now, count)
        assert out.allowed == (tokens >= cost)
        if out.allowed and count:
            tokens -= cost
        assert out.remaining == int(tokens)  # whole tokens left
        if not out.allowed and cost <= limit:
            wait = out.retry_after_ns
            assert tokens + Fraction(wait * limit, W) >= cost
            assert tokens + Fraction((wait - 1) * limit, W) < cost


@SETTINGS
@given(algorithm=st.sampled_from(["fixed_window", "sliding_window", "token_bucket"]),
       keys=st.lists(st.one_of(st.integers(), st.text(), st.binary(),
                               st.tuples(st.integers(), st.text())), min_size=1, max_size=20))
def test_sweep_removes_only_what_no_longer_holds_anything(algorithm, keys):
    buckets = Buckets(algorithm)
    for key in keys:
        buckets.hit(key, 5, W, 1, START)
    assert buckets.sweep(START) == 0
    assert len(buckets) == len(set(keys))
    assert buckets.sweep(START + 2 * W) == len(set(keys))
    assert buckets.table == {}


# ---- real processes -----------------------------------------------------------------------------

def _hitter(parent, hits, limit):
    limiter = RateLimiter("shared")
    otpy.send(parent, "ready")
    otpy.receive(match=lambda m: m == "go")
    otpy.send(parent, ("allowed", sum(limiter.hit("k", limit=limit, window=3600.0).allowed
                                      for _ in range(hits))))


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(processes=st.integers(2, 4), hits=st.integers(1, 25), limit=st.integers(1, 60),
       algorithm=st.sampled_from(["sliding_window", "token_bucket"]))
def test_concurrent_processes_get_exactly_min_of_limit_and_hits(processes, hits, limit,
                                                                algorithm):
    # sliding_window and a token bucket with an hour's refill: no boundary
    # can fall inside the example, so the expected figure is exact.
    sup = otpy.Supervisor.start_link([RateLimiter.child_spec("shared", algorithm=algorithm)])
    try:
        me = otpy.self()
        pids = [otpy.spawn(_hitter, me, hits, limit) for _ in range(processes)]
        for _ in pids:
            expect(lambda m: m == "ready")
        for pid in pids:
            otpy.send(pid, "go")
        allowed = sum(expect(lambda m: m[:1] == ("allowed",), timeout=DEADLINE)[1] for _ in pids)
        assert allowed == min(limit, processes * hits)
        seen = RateLimiter("shared").inspect("k", limit=limit, window=3600.0)
        assert seen.count == allowed
    finally:
        otpy.stop(sup)


# ---- the shared table computes what the owner's buckets compute --------------------------------

@SETTINGS
@given(algorithm=st.sampled_from(["fixed_window", "token_bucket"]), limit=st.integers(1, 10),
       hits=st.lists(st.tuples(st.integers(0, 2 * W), st.integers(0, 2500), st.integers(1, 6),
                               st.booleans()), min_size=1, max_size=80))
def test_the_shared_table_agrees_with_the_buckets(algorithm, limit, hits):
    # Many keys (up to 2500) in a table that starts at 1024 slots: probing,
    # growth (the owner's rebuild) and sweeps all happen along the way.
    holder = os.memfd_create("test-control", os.MFD_CLOEXEC)
    os.ftruncate(holder, CONTROL_BYTES)
    control = Control(os.getpid(), holder)
    owner = TableOwner(Control(os.getpid(), holder), algorithm)
    try:
        owner.rebuild(START)
        model = Buckets(algorithm)
        now = START
        for gap, key, cost, count in hits:
            now += gap
            expected = tuple(model.hit(("k", key), limit, W, cost, now, count))
            hi, lo = digest(("k", key))
            with control:
                got = decide(control.current(), algorithm, hi, lo, limit, W, cost, now, count)
            if got is GROW:
                owner.rebuild(now, grow=True)
                with control:
                    got = decide(control.current(), algorithm, hi, lo, limit, W, cost, now, count)
            assert got == expected
            if gap > W:  # now and then, the periodic sweep (skipped if nothing can be due)
                dropped = owner.sweep(now)
                assert (dropped or 0) == model.sweep(now)
        assert owner.counts()[0] == len(model)
    finally:
        control.close()
        owner.close()
        owner.control.close()
        os.close(holder)


def test_the_shared_table_grows_and_keeps_every_bucket():
    holder = os.memfd_create("test-control", os.MFD_CLOEXEC)
    os.ftruncate(holder, CONTROL_BYTES)
    control = Control(os.getpid(), holder)
    owner = TableOwner(Control(os.getpid(), holder), "fixed_window")
    try:
        owner.rebuild(START)
        grown = 0
        for key in range(3000):
            hi, lo = digest(key)
            with control:
                got = decide(control.current(), "fixed_window", hi, lo, 5, W, 2, START, True)
            if got is GROW:
                grown += 1
                owner.rebuild(START, grow=True)
                with control:
                    got = decide(control.current(), "fixed_window", hi, lo, 5, W, 2, START, True)
            assert got[:2] == (True, 2)
        assert grown >= 2 and owner.table.capacity >= 8192
        for key in range(3000):
            hi, lo = digest(key)
            with control:
                assert decide(control.current(), "fixed_window", hi, lo, 5, W, 2, START,
                              False)[1] == 2
        assert owner.counts() == (3000, 3000)
        assert owner.rebuild(START + W) == 3000  # the window passed: all dropped
        assert owner.table.capacity == 1024  # and the table shrank back
    finally:
        control.close()
        owner.close()
        owner.control.close()
        os.close(holder)


def _hold_lock(parent, control_ref):
    control = Control(control_ref[0], control_ref[1])
    with control:
        otpy.send(parent, "holding")
        otpy.receive(match=lambda m: m == "release")


def test_a_lock_held_past_the_timeout_is_limiter_busy_not_a_hang():
    import helpers
    from otpy_pool import LimiterBusy, RateLimiter

    helpers.CURRENT_TREE.start_child(RateLimiter.child_spec("api"))
    api = RateLimiter("api", timeout=0.3)
    mode, control_ref, _ = lowlevel.ask("api", ("attach",))
    assert mode == "shared"
    holder = otpy.spawn(_hold_lock, otpy.self(), control_ref)
    expect(lambda m: m == "holding")
    try:
        began = time.monotonic()
        try:
            api.hit("k", 1, 1.0)
        except LimiterBusy:
            pass
        else:
            raise AssertionError("the hit went through a held lock")
        assert 0.3 <= time.monotonic() - began < DEADLINE
    finally:
        otpy.send(holder, "release")
    assert api.hit("k", 1, 1.0).allowed  # released: on it goes


def test_a_lock_timeout_of_inf_waits_for_a_thread_holding_it():
    """timeout=math.inf (a handle's "no limit") waits for the lock; it was
    passed to Lock.acquire as it was, which cannot take it (OverflowError)."""
    import math
    import threading

    holder = os.memfd_create("test-control", os.MFD_CLOEXEC)
    os.ftruncate(holder, CONTROL_BYTES)
    control = Control(os.getpid(), holder, timeout=math.inf)
    outcome = []

    def enter():
        try:
            with control:
                outcome.append("entered")
        except BaseException as exc:
            outcome.append(exc)

    try:
        control.thread_lock.acquire()  # as another thread of the process in a hit
        thread = threading.Thread(target=enter)
        thread.start()
        thread.join(timeout=0.5)  # a refused timeout ends it at once
        assert thread.is_alive() and outcome == [], outcome
        control.thread_lock.release()
        thread.join(timeout=DEADLINE)
        assert outcome == ["entered"]
    finally:
        control.close()
        os.close(holder)


def _publish_a_table_and_wait(parent, holder_pid, holder_fd):
    owner = TableOwner(Control(holder_pid, holder_fd), "fixed_window")
    with owner.control:
        owner.rebuild(START)
    otpy.send(parent, "published")
    otpy.receive()


def test_a_table_whose_owner_died_unreplaced_is_limiter_not_running_not_a_crash():
    from otpy_pool import LimiterNotRunning, LimiterTimeout
    from otpy_pool._limiter_storage.table import SharedTable
    from otpy_pool._shared_owner import OwnerLink

    holder = os.memfd_create("test-control", os.MFD_CLOEXEC)
    os.ftruncate(holder, CONTROL_BYTES)
    try:
        owner, ref = otpy.spawn_monitor(_publish_a_table_and_wait, otpy.self(), os.getpid(),
                                        holder)
        expect(lambda m: m == "published")
        os.kill(owner.os_pid, signal.SIGKILL)  # its table's fd dies with it
        expect_down(ref)
        control = Control(os.getpid(), holder)
        try:
            with control:
                try:
                    control.current()
                except TableGone:
                    pass
                else:
                    raise AssertionError("mapped a dead owner's table")
        finally:
            control.close()
        link = OwnerLink("nobody", "", "rate limiter", LimiterNotRunning, LimiterTimeout)
        shared = SharedTable((os.getpid(), holder, CONTROL_BYTES), "fixed_window", link, 0.2)
        try:
            try:
                shared.hit("k", 1, 1.0, W, 1, True)
            except LimiterNotRunning:
                pass
            else:
                raise AssertionError("a hit went through without a table")
        finally:
            shared.close()
    finally:
        os.close(holder)
