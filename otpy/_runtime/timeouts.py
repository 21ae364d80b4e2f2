"""One rule for every timeout, deadline and interval the public API takes.

``None`` and ``math.inf`` mean "no limit" wherever waiting forever is allowed
(and so does any finite value too large for the OS to wait: more than
``threading.TIMEOUT_MAX`` seconds, about 292 years). ``nan``, negative
values, bools and anything that is not a real number are refused before
anything is sent or started, with an error that names the parameter.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any

# Longer waits than this cannot be passed to the OS (lock.acquire, SO_RCVTIMEO).
LONGEST = threading.TIMEOUT_MAX


def check_timeout(value: Any, what: str, *, forever: bool = True,
                  zero: bool = True) -> float | None:
    """The seconds ``value`` stands for, or None for "no limit".

    ``what`` names the parameter in the error (``"call timeout"``).
    ``forever=False``: None and infinity are refused (ValueError), for a
    value that must be finite (a delay, a shutdown grace). ``zero=False``:
    0 is refused too. Raises TypeError for a bool or a non-number,
    ValueError for nan, a negative value or a refused zero or infinity.
    """
    if type(value) is float and 0.0 < value < LONGEST:  # the common case, cheap
        return value
    if value is None:
        if forever:
            return None
        raise ValueError(f"{what} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds (or None for no limit), "
                        f"not {type(value).__name__}: {value!r}")
    seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"{what} must be a number of seconds, not nan")
    if seconds < 0:
        raise ValueError(f"{what} must be >= 0 seconds, not {value!r}")
    if seconds == 0 and not zero:
        raise ValueError(f"{what} must be > 0 seconds, not {value!r}")
    if seconds >= LONGEST:
        if forever:
            return None
        raise ValueError(f"{what} must be a finite number of seconds, not {value!r}")
    return seconds
