"""RateLimiter's handle (``_limiter``), in the manner of Hammer's suite: allow
until the limit, then deny with a retry time; costs; independent keys and
windows; any key; exact with many processes on one key; its options. The
owner (sweeps, SIGKILL, stop) is in test_limiter_owner.py, the shared table
in test_limiter_shared.py, the arithmetic in tests/unit/test_limiter_algorithms.py."""

from __future__ import annotations

import pickle
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otpy
from otpy_pool import Decision, RateLimited, RateLimiter

from helpers import DEADLINE, expect
from limiters import ALGORITHMS, LONG, start

@pytest.fixture(params=ALGORITHMS)
def api(request):
    return start(algorithm=request.param)


# ---- counting -------------------------------------------------------------------------------

def test_allows_up_to_the_limit_then_denies_with_a_retry_time(api):
    for n in range(1, 6):
        d = api.hit("user:42", limit=5, window=LONG)
        assert (d.allowed, d.count, d.remaining, d.retry_after) == (True, n, 5 - n, 0.0)
    d = api.hit("user:42", limit=5, window=LONG)
    assert (d.allowed, d.count, d.remaining) == (False, 5, 0)
    assert 0 < d.retry_after <= LONG
    assert d.reset_at > time.time()


def test_fixed_windows_are_aligned_on_epoch_time():
    api = start(algorithm="fixed_window")
    before = time.time()
    d = api.hit("k", limit=1, window=10.0)
    after = time.time()
    assert d.reset_at % 10 == 0  # the end of a window that began at a multiple of 10 s
    assert before < d.reset_at <= after + 10
    api.hit("k", limit=1, window=LONG)
    denied = api.hit("k", limit=1, window=LONG)
    assert denied.reset_at % LONG == 0
    assert denied.retry_after == pytest.approx(denied.reset_at - time.time(), abs=0.5)


def test_a_cost_is_allowed_only_if_it_fits_and_a_denied_hit_is_not_counted(api):
    assert api.hit("k", limit=10, window=LONG, cost=7).count == 7
    denied = api.hit("k", limit=10, window=LONG, cost=4)
    assert not denied.allowed and denied.count == 7
    fits = api.hit("k", limit=10, window=LONG, cost=3)  # the smaller cost still fits
    assert fits.allowed and fits.count == 10 and fits.remaining == 0


def test_keys_and_windows_are_independent(api):
    api.hit("a", limit=1, window=LONG)
    assert not api.hit("a", limit=1, window=LONG).allowed
    assert api.hit("b", limit=1, window=LONG).allowed
    assert api.hit("a", limit=1, window=30.0).allowed


def test_keys_that_differ_as_python_values_are_different_buckets(api):
    keys = [1, "1", b"1", (1,), ("1",), (1, "1"), ((1,),), "x" * 10_000, "ключ 🔑", "\udcff"]
    for key in keys:
        assert api.hit(key, limit=1, window=LONG).allowed, key
    for key in keys:
        assert not api.hit(key, limit=1, window=LONG).allowed, key


@pytest.mark.parametrize("key", [1.5, None, [1], {"a": 1}, (1, [2])])
def test_other_key_types_are_refused(key):
    api = start()
    with pytest.raises(TypeError, match="key"):
        api.hit(key, limit=1, window=1.0)


@pytest.mark.parametrize("kwargs, error, word", [
    ({"limit": 0}, ValueError, "limit"),
    ({"limit": 1.0}, TypeError, "limit"),
    ({"cost": 0}, ValueError, "cost"),
    ({"window": 0}, ValueError, "window"),
    ({"window": float("inf")}, ValueError, "window"),
    ({"window": "1"}, TypeError, "window"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, word):
    api = start()
    args = {"limit": 1, "window": 1.0, "cost": 1, **kwargs}
    with pytest.raises(error, match=word):
        api.hit("k", **args)


@pytest.mark.parametrize("options, error, word", [
    ({"algorithm": "leaky"}, ValueError, "algorithm"),
    ({"cleanup_interval": 0}, ValueError, "cleanup_interval"),
    ({"cleanup_interval": None}, ValueError, "cleanup_interval"),  # must be finite
    ({"storage": "memcached://x"}, ValueError, "storage"),
    ({"storage": "redis://localhost:1", "algorithm": "token_bucket"}, ValueError, "token_bucket"),
])
def test_bad_options_are_refused_at_start(options, error, word):
    with pytest.raises(error, match=word):
        RateLimiter.start_link("api", **options)
    with pytest.raises(error, match=word):
        RateLimiter.child_spec("api", **options)
    assert otpy.whereis("api") is None


def test_inspect_counts_nothing(api):
    api.hit("k", limit=3, window=LONG)
    seen = api.inspect("k", limit=3, window=LONG)
    assert (seen.allowed, seen.count, seen.remaining) == (True, 1, 2)
    assert api.inspect("k", limit=3, window=LONG).count == 1
    assert api.inspect("fresh", limit=3, window=LONG).count == 0


def test_reset_deletes_every_bucket_of_the_key(api):
    api.hit("k", limit=1, window=LONG)
    api.hit("k", limit=1, window=30.0)
    api.hit("other", limit=1, window=LONG)
    assert api.reset("k") == 2
    assert api.reset("k") == 0
    assert api.hit("k", limit=1, window=LONG).allowed
    assert not api.hit("other", limit=1, window=LONG).allowed


def test_limit_runs_the_block_or_raises_rate_limited(api):
    ran = []
    with api.limit("k", limit=1, window=LONG) as decision:
        ran.append(decision)
    assert isinstance(ran[0], Decision) and ran[0].allowed
    with pytest.raises(RateLimited) as info:
        with api.limit("k", limit=1, window=LONG):
            ran.append("second")
    assert len(ran) == 1
    assert 0 < info.value.retry_after <= LONG
    assert isinstance(info.value, otpy.OtpyError)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.retry_after == info.value.retry_after


def test_acquire_waits_for_the_quota_to_come_back(api):
    api.hit("k", limit=2, window=0.2, cost=2)
    decision = api.acquire("k", limit=2, window=0.2, timeout=5.0)
    assert decision.allowed


def test_acquire_raises_at_once_when_the_wait_would_pass_the_timeout(api):
    api.hit("k", limit=1, window=LONG)
    began = time.monotonic()
    with pytest.raises(RateLimited) as info:
        api.acquire("k", limit=1, window=LONG, timeout=0.5)
    assert time.monotonic() - began < 0.5
    assert info.value.retry_after > 0.5


def test_token_bucket_starts_full_and_refills_at_limit_per_window():
    api = start(algorithm="token_bucket")
    assert api.hit("k", limit=4, window=0.4, cost=4).allowed
    denied = api.hit("k", limit=4, window=0.4)
    assert not denied.allowed
    assert 0 < denied.retry_after <= 0.1 + 1e-6  # one token every window/limit seconds
    assert api.acquire("k", limit=4, window=0.4, timeout=5.0).allowed


# ---- shared, exact under concurrency ------------------------------------------------------

def _hammer(parent, limiter, hits, key):
    """Hit as fast as possible after "go"; report how many were allowed."""
    otpy.send(parent, ("ready", otpy.self()))
    otpy.receive(match=lambda m: m == "go")
    allowed = sum(limiter.hit(key, limit=500, window=LONG).allowed for _ in range(hits))
    otpy.send(parent, ("allowed", allowed))


def _run_hammers(limiter, processes, hits, key="shared"):
    me = otpy.self()
    pids = [otpy.spawn(_hammer, me, limiter, hits, key) for _ in range(processes)]
    for pid in pids:
        expect(lambda m, p=pid: m == ("ready", p))
    for pid in pids:
        otpy.send(pid, "go")
    return sum(expect(lambda m: m[:1] == ("allowed",), timeout=DEADLINE * 6)[1] for _ in pids)


def test_eight_processes_on_one_key_never_get_more_than_the_limit():
    api = start(algorithm="fixed_window")
    allowed = _run_hammers(api, 8, 100)
    assert allowed == 500
    assert api.inspect("shared", limit=500, window=LONG).count == 500


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_hit_is_lost_under_concurrency(algorithm):
    api = start(algorithm=algorithm)
    allowed = _run_hammers(api, 8, 40, key=("shared", algorithm))
    assert allowed == 320
    assert api.inspect(("shared", algorithm), limit=500, window=LONG).count == 320


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


def test_a_handle_is_picklable_and_works_by_name_from_another_process():
    api = start()
    me = otpy.self()
    assert pickle.loads(pickle.dumps(api)) == api
    otpy.spawn(lambda: otpy.send(me, ("hit", RateLimiter("api").hit("k", 2, LONG).count)))
    assert expect(lambda m: m[:1] == ("hit",)) == ("hit", 1)
    assert api.hit("k", 2, LONG).count == 2


# ---- options and handles ---------------------------------------------------------------------

def test_a_missing_limits_library_is_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "limits", None)  # import limits fails
    with pytest.raises(ImportError, match=r"pip install 'otpy\[redis\]'"):
        RateLimiter.start_link("api", storage="redis://127.0.0.1:6379")
    assert otpy.whereis("api") is None


def test_a_bad_handle_is_refused_by_name():
    with pytest.raises(TypeError, match="name"):
        RateLimiter("")
    with pytest.raises(TypeError, match="timeout"):
        RateLimiter("api", timeout="5")
    with pytest.raises(ValueError, match="timeout"):
        RateLimiter("api", timeout=0)


# ---- asyncio ----------------------------------------------------------------------------------

def test_ahit_alimit_and_aacquire_count_as_the_sync_forms(api):
    """The awaitable forms share the buckets of the sync ones (a sliding
    window's hit is a call to the owner: awaited, not blocking the loop)."""
    import asyncio

    async def scenario():
        first = await api.ahit("k", limit=3, window=LONG)
        async with api.alimit("k", limit=3, window=LONG) as second:
            pass
        with pytest.raises(RateLimited):
            async with api.alimit("k", limit=3, window=LONG, cost=2):
                raise AssertionError("a denied block does not run")
        await api.ahit("short", limit=1, window=0.2)
        again = await api.aacquire("short", limit=1, window=0.2, timeout=DEADLINE)
        with pytest.raises(RateLimited):  # it would take an hour: refused at once
            await api.aacquire("k", limit=3, window=LONG, cost=2, timeout=0.5)
        return first, second, again

    first, second, again = asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert (first.count, second.count, again.allowed) == (1, 2, True)
    assert api.hit("k", limit=3, window=LONG).count == 3  # the sync form sees them
    with pytest.raises(TypeError):
        asyncio.run(api.ahit("k", limit="3", window=LONG))
