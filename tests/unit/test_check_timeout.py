"""The one rule for timeouts (otpy.lowlevel.check_timeout): None and inf mean
no limit, nan, negatives, bools and non-numbers are refused with the
parameter's name."""

from __future__ import annotations

import fractions
import math
import threading

import pytest

from otpy.lowlevel import check_timeout


@pytest.mark.parametrize("value", [None, math.inf, threading.TIMEOUT_MAX, 1e300])
def test_no_limit(value):
    assert check_timeout(value, "t") is None


@pytest.mark.parametrize("value, seconds", [(0, 0.0), (0.0, 0.0), (1, 1.0), (2.5, 2.5),
                                            (fractions.Fraction(1, 4), 0.25)])
def test_a_number_of_seconds(value, seconds):
    result = check_timeout(value, "t")
    assert result == seconds and type(result) is float


@pytest.mark.parametrize("value, error, text", [
    (math.nan, ValueError, "call timeout must be a number of seconds, not nan"),
    (-1, ValueError, "call timeout must be >= 0 seconds, not -1"),
    (-math.inf, ValueError, "call timeout must be >= 0"),
    (True, TypeError, "call timeout must be a number of seconds .*not bool"),
    ("5", TypeError, "not str: '5'"),
    ([1], TypeError, "not list"),
    (1j, TypeError, "not complex"),
])
def test_refused_naming_the_parameter(value, error, text):
    with pytest.raises(error, match=text):
        check_timeout(value, "call timeout")


def test_finite_only_and_nonzero_only():
    for value in (None, math.inf):
        with pytest.raises(ValueError, match="delay must be"):
            check_timeout(value, "delay", forever=False)
    with pytest.raises(ValueError, match="grace must be > 0 seconds, not 0"):
        check_timeout(0, "grace", zero=False)
    assert check_timeout(3, "delay", forever=False, zero=False) == 3.0
