"""One rule for every option and argument otpy_pool checks: the pool, the
breaker, the limiter and recovery all check through these functions, so a
value refused by one is refused by all, with the same kind of error.

Each check takes the value and ``what`` (the name the error gives it) and
returns the value to keep. The rule:

- A wrong type is a TypeError, a value out of range a ValueError; both name
  ``what`` and the value.
- A bool is never a number: ``True`` as seconds, a count or a ratio is a
  TypeError (it is an int to Python, never what the caller meant).
- nan is refused wherever a number is taken.
- Infinity means "no limit", and only seconds may have no limit: in
  :func:`seconds` None and ``math.inf`` are both "no limit" (returned as
  None; this is ``otpy.lowlevel.check_timeout``'s rule). A count's "no limit"
  is None (``none_ok``), never inf; :func:`finite_seconds`, :func:`number`
  and :func:`ratio` take finite values only.

The API is small and stable: other modules build on it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable

from otpy import lowlevel


def seconds(value: Any, what: str, *, zero: bool = False) -> float | None:
    """A timeout, deadline or interval: seconds > 0 (>= 0 with ``zero``), or
    None for no limit (None and ``math.inf`` alike)."""
    return lowlevel.check_timeout(value, what, zero=zero)


def finite_seconds(value: Any, what: str, *, zero: bool = False) -> float:
    """A window or a delay: finite seconds > 0 (>= 0 with ``zero``); None
    and infinity are refused (a window with no end counts nothing)."""
    checked = lowlevel.check_timeout(value, what, forever=False, zero=zero)
    assert checked is not None  # forever=False refuses None
    return checked


def count(value: Any, what: str, *, minimum: int = 0, maximum: int | None = None,
          none_ok: bool = False) -> int | None:
    """An int from ``minimum`` to ``maximum`` (no bound if None); None is
    accepted (for "no limit") only with ``none_ok``."""
    if value is None and none_ok:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int{' or None' if none_ok else ''}, "
                        f"not {type(value).__name__}: {value!r}")
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{what} must be between {minimum} and {_show(maximum)}, "
                         f"not {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, not {value!r}")
    return value


def number(value: Any, what: str, *, minimum: float = -math.inf,
           maximum: float = math.inf) -> float:
    """A finite real number from ``minimum`` to ``maximum``, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}: {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    if not minimum <= result <= maximum:
        if maximum == math.inf:
            raise ValueError(f"{what} must be >= {minimum:g}, not {value!r}")
        raise ValueError(f"{what} must be between {minimum:g} and {maximum:g}, not {value!r}")
    return result


def ratio(value: Any, what: str) -> float:
    """A fraction from 0 to 1 (a probability), as a float."""
    return number(value, what, minimum=0.0, maximum=1.0)


def name(value: Any, what: str = "name") -> str:
    """A non-empty str: what a process is registered as."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty str, not {value!r}")
    return value


def names(value: Any, what: str) -> tuple[str, ...]:
    """A collection of names (str); one str is refused, as it would be read
    letter by letter."""
    if isinstance(value, str):
        raise TypeError(f"{what} is a collection of names, not one str: {value!r}")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} is a collection of names (str), not {value!r}") from None
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{what} is a collection of names (str), not {items!r}")
    return items


def choice(value: Any, what: str, choices: Iterable[Any]) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, "
                         f"not {value!r}")
    return value


def flag(value: Any, what: str) -> bool:
    """A bool (not any truthy value: ``lazy="no"`` is a mistake, not True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {value!r}")
    return value


def exceptions(value: Any, what: str) -> tuple[type[BaseException], ...]:
    """An exception class or a tuple of them, as a tuple (what ``except`` takes)."""
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in value):
        raise TypeError(f"{what} must be an exception class or a tuple of them, not {value!r}")
    return value


def function(value: Any, what: str, *, none_ok: bool = False) -> Callable[..., Any] | None:
    """A callable (None accepted with ``none_ok``)."""
    if value is None and none_ok:
        return None
    if not callable(value):
        raise TypeError(f"{what} must be callable{' or None' if none_ok else ''}, "
                        f"not {value!r}")
    return value


def _show(n: int) -> str:
    """A bound as a person reads it: 2**62 rather than its 19 digits."""
    if n > 1 << 16 and n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1}"
    return str(n)


__all__ = ["seconds", "finite_seconds", "count", "number", "ratio", "name", "names", "choice",
           "flag", "exceptions", "function"]
