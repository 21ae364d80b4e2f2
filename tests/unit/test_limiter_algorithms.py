"""The limiter's arithmetic (``_limiter_algorithms``) against models: fake
time, in nanoseconds, no processes."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otpy_pool._limiter_algorithms import Buckets


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
