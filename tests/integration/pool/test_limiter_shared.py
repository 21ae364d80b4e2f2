"""The limiter's shared table (``_limiter_shared``, and the storage that uses
it, ``_limiter_storage.table``): it computes what the owner's buckets compute,
grows and shrinks, its lock (threads and processes, a holder killed or
stopped, no limit), and a table whose owner died."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otpy
import pytest
from otpy import lowlevel
from otpy.testing import synchronize, wait_for
from otpy_pool import LimiterBusy, LimiterNotRunning, LimiterTimeout, RateLimiter
from otpy_pool._limiter_algorithms import Buckets
from otpy_pool._limiter_shared import (CONTROL_BYTES, GROW, Control, TableGone, TableOwner, decide,
                                      digest)
from otpy_pool._limiter_storage.table import SharedTable
from otpy_pool._shared_owner import OwnerLink

import helpers
from helpers import DEADLINE, expect, expect_down
from limiters import start, wait_for_sweep

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
W = 1_000  # the window, in (fake) nanoseconds
START = 10 * W


# ---- the table computes what the owner's buckets compute --------------------------------

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


def test_many_keys_grow_the_table_and_a_sweep_shrinks_it_back():
    api = start(algorithm="fixed_window", cleanup_interval=0.05)
    window = 1.0  # fixed windows are aligned on epoch time: the hits must fit in one,
    # or the sweeps between them drop the early ones and the table need not grow
    # (the flaky detector caught that, 1 run in 20)
    for attempt in range(3):
        wait_for(lambda: time.time() % window < window / 4)  # early in a window
        started = time.time() // window
        for n in range(3000):  # past half of the 1024 first slots, twice
            last = api.hit((attempt, n), limit=1, window=window)
            assert last.allowed
        if time.time() // window == started:
            break
    else:
        pytest.fail("3,000 hits never fitted in one 1 s window")
    grown = api.stats()
    assert grown["table_bytes"] > 8 * 8 * 4096
    wait_for(lambda: time.time() > last.reset_at, timeout=DEADLINE)  # the window passes
    after = wait_for_sweep(api)
    assert after["buckets"] == 0
    assert after["table_bytes"] < grown["table_bytes"] / 2


# ---- the lock ---------------------------------------------------------------------------

def test_threads_of_one_process_are_exact_too():
    api = start(algorithm="token_bucket")  # 150 an hour: no refill within the test
    api.hit("warm", 1, 60.0)  # connect before the threads start

    def hammer():
        return sum(api.hit("t", limit=150, window=3600.0).allowed for _ in range(100))

    allowed = synchronize({n: hammer for n in range(4)}, timeout=DEADLINE, in_processes=False)
    assert sum(allowed.values()) == 150


def test_a_caller_killed_while_hitting_never_blocks_the_others():
    api = start(algorithm="token_bucket")
    me = otpy.self()

    def forever():
        handle = RateLimiter("api")
        otpy.send(me, ("hitting", otpy.self()))
        while True:
            handle.hit("k", limit=10**6, window=3600.0)

    victims = [otpy.spawn(forever) for _ in range(2)]
    for pid in victims:
        expect(lambda m, p=pid: m == ("hitting", p))
    for pid in victims:  # likely inside the lock at some point of its loop
        ref = otpy.monitor(pid)
        os.kill(pid.os_pid, signal.SIGKILL)
        expect_down(ref)
    before = api.inspect("k", limit=10**6, window=3600.0).count
    assert api.hit("k", limit=10**6, window=3600.0).allowed
    assert api.inspect("k", limit=10**6, window=3600.0).count >= before


def _hold_lock(parent, control_ref):
    control = Control(control_ref[0], control_ref[1])
    with control:
        otpy.send(parent, "holding")
        otpy.receive(match=lambda m: m == "release")


def test_a_lock_held_past_the_timeout_is_limiter_busy_not_a_hang():
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


# ---- a table whose owner died -----------------------------------------------------------

def _publish_a_table_and_wait(parent, holder_pid, holder_fd):
    owner = TableOwner(Control(holder_pid, holder_fd), "fixed_window")
    with owner.control:
        owner.rebuild(START)
    otpy.send(parent, "published")
    otpy.receive()


def test_a_table_whose_owner_died_unreplaced_is_limiter_not_running_not_a_crash():
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
