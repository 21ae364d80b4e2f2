"""otpy_pool's one checks module: the same rule for bool, inf and nan in every
check, a TypeError for a wrong type and a ValueError for a value out of
range, each naming the argument; and the breaker, the limiter and recovery
refuse alike through it."""

from __future__ import annotations

import math

import pytest

from otpy_pool import CircuitBreaker, Policy, RateLimiter, Recovery, protect
from otpy_pool import _checks as checks


@pytest.mark.parametrize("check", [
    lambda v: checks.seconds(v, "x"),
    lambda v: checks.finite_seconds(v, "x"),
    lambda v: checks.count(v, "x"),
    lambda v: checks.number(v, "x"),
    lambda v: checks.ratio(v, "x"),
])
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_never_a_number(check, value):
    with pytest.raises(TypeError, match="^x must be"):
        check(value)


@pytest.mark.parametrize("check", [
    lambda v: checks.seconds(v, "x"),
    lambda v: checks.finite_seconds(v, "x"),
    lambda v: checks.number(v, "x"),
    lambda v: checks.ratio(v, "x"),
])
def test_nan_is_refused_wherever_a_number_is_taken(check):
    with pytest.raises(ValueError, match="^x must be .*nan"):
        check(math.nan)


def test_a_count_is_an_int_and_nan_or_inf_is_not_one():
    for value in (math.nan, math.inf, 1.0, "1"):
        with pytest.raises(TypeError, match="^x must be an int, not"):
            checks.count(value, "x")


def test_infinity_means_no_limit_only_for_seconds():
    assert checks.seconds(math.inf, "x") is None
    assert checks.seconds(None, "x") is None
    for check in (lambda v: checks.finite_seconds(v, "x"), lambda v: checks.number(v, "x"),
                  lambda v: checks.ratio(v, "x")):
        with pytest.raises(ValueError, match="^x must be"):
            check(math.inf)
    with pytest.raises(ValueError, match="^x must be"):
        checks.finite_seconds(None, "x")
    # a count's "no limit" is None, asked for by the caller
    assert checks.count(None, "x", none_ok=True) is None
    with pytest.raises(TypeError, match="an int or None"):
        checks.count("many", "x", none_ok=True)


def test_seconds_refuse_zero_unless_asked():
    with pytest.raises(ValueError, match="x must be > 0 seconds"):
        checks.seconds(0, "x")
    assert checks.seconds(0, "x", zero=True) == 0.0
    with pytest.raises(ValueError, match="x must be > 0 seconds"):
        checks.finite_seconds(0.0, "x")
    assert checks.finite_seconds(0, "x", zero=True) == 0.0
    assert checks.finite_seconds(2, "x") == 2.0


def test_ranges_name_the_bound():
    with pytest.raises(ValueError, match=r"^x must be >= 1, not 0$"):
        checks.count(0, "x", minimum=1)
    with pytest.raises(ValueError, match=r"^x must be between 1 and 2\*\*62, not 0$"):
        checks.count(0, "x", minimum=1, maximum=2 ** 62)
    with pytest.raises(ValueError, match=r"^x must be between 1 and 10, not 11$"):
        checks.count(11, "x", minimum=1, maximum=10)
    assert checks.count(2 ** 62, "x", maximum=2 ** 62) == 2 ** 62
    with pytest.raises(ValueError, match=r"^x must be between 0 and 1, not 1.5$"):
        checks.ratio(1.5, "x")
    with pytest.raises(ValueError, match=r"^x must be >= 1, not 0.5$"):
        checks.number(0.5, "x", minimum=1.0)
    assert checks.ratio(1, "x") == 1.0 and type(checks.ratio(1, "x")) is float


def test_names_choices_flags_exceptions_and_functions():
    assert checks.name("db") == "db"
    for bad in ("", None, 3):
        with pytest.raises(TypeError, match="^name must be a non-empty str"):
            checks.name(bad)
    assert checks.names({"a"}, "xs") == ("a",)
    with pytest.raises(TypeError, match="xs is a collection of names, not one str"):
        checks.names("ab", "xs")
    with pytest.raises(TypeError, match="xs is a collection of names"):
        checks.names([1], "xs")
    with pytest.raises(TypeError, match="xs is a collection of names"):
        checks.names(3, "xs")
    assert checks.choice(None, "j", (None, "full")) is None
    with pytest.raises(ValueError, match="^j must be one of None, 'full', not 'x'$"):
        checks.choice("x", "j", (None, "full"))
    with pytest.raises(ValueError, match="^j must be one of 0, 1"):
        checks.choice(False, "j", (0, 1))  # a bool is not the int it equals
    assert checks.flag(False, "f") is False
    with pytest.raises(TypeError, match="^f must be a bool"):
        checks.flag(0, "f")
    assert checks.exceptions(KeyError, "e") == (KeyError,)
    assert checks.exceptions((KeyError, OSError), "e") == (KeyError, OSError)
    for bad in ("KeyError", (int,), [KeyError]):
        with pytest.raises(TypeError, match="^e must be an exception class"):
            checks.exceptions(bad, "e")
    assert checks.function(None, "f", none_ok=True) is None
    with pytest.raises(TypeError, match="^f must be callable, not 3"):
        checks.function(3, "f")


# ---- the same rule through each part's options ----------------------------------

@pytest.mark.parametrize("make, error, word", [
    (lambda: CircuitBreaker.child_spec("db", max_failures=True), TypeError, "max_failures"),
    (lambda: CircuitBreaker.child_spec("db", window=math.inf), ValueError, "window"),
    (lambda: CircuitBreaker.child_spec("db", fault_rate=math.nan), ValueError, "fault_rate"),
    (lambda: CircuitBreaker.child_spec("db", fault_rate=True), TypeError, "fault_rate"),
    (lambda: RateLimiter.child_spec("api", cleanup_interval=math.inf), ValueError,
     "cleanup_interval"),
    (lambda: RateLimiter.child_spec("api", cleanup_interval=True), TypeError,
     "cleanup_interval"),
    (lambda: Policy(retries=True), TypeError, "retries"),
    (lambda: Policy(retries=math.inf), TypeError, "retries"),
    (lambda: Policy(multiplier=math.nan), ValueError, "multiplier"),
    (lambda: Policy(multiplier=math.inf), ValueError, "multiplier"),
    (lambda: Policy(multiplier=True), TypeError, "multiplier"),
    (lambda: Policy(backoff=math.nan), ValueError, "backoff"),
    (lambda: Recovery.child_spec("r", classes=["a", 1]), TypeError, "classes"),
    (lambda: Recovery(""), TypeError, "name"),
    (lambda: protect(object(), deadline=math.nan), ValueError, "deadline"),
    (lambda: protect(object(), deadline=True), TypeError, "deadline"),
    (lambda: protect(object(), idempotent=[1]), TypeError, "idempotent"),
    (lambda: protect(object(), breaker_failure_on="OSError"), TypeError, "breaker_failure_on"),
])
def test_every_part_refuses_alike(make, error, word):
    with pytest.raises(error, match=word):
        make()


def test_infinity_is_no_limit_where_a_part_takes_seconds_that_may_have_none():
    assert protect(object(), deadline=math.inf).deadline is None
    assert CircuitBreaker("db", timeout=math.inf).timeout == math.inf
    assert RateLimiter("api", timeout=None).timeout == math.inf
    assert protect(object(), breaker_failure_on=OSError).breaker_failure_on == (OSError,)
