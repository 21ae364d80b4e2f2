"""What a metric is, independent of who exports it: sources declare
``Metric``s and produce ``Sample``s; the Prometheus collector and the
OpenTelemetry instruments both read these, so a source is written once."""

from __future__ import annotations

import dataclasses
import importlib
import re
from types import ModuleType
from typing import Literal

from .. import OtpyError

MetricType = Literal["counter", "gauge", "histogram"]
TYPES = ("counter", "gauge", "histogram")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class MissingExtra(OtpyError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming the pip command, at once:
    before anything is started or half set up."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'otpy[{extra}]'") from None


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric family as a source declares it, before any reading.

    ``name`` follows Prometheus conventions: base units in the name
    (``_seconds``, ``_bytes``), a counter's ends in ``_total``. ``labels`` are
    the label names; keep their values to a bounded set (never a pid or a
    session id). ``unit`` is the UCUM unit OpenTelemetry instruments carry
    ("s", "By"; "" for a count).
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not a Prometheus name")
        if self.type not in TYPES:
            raise ValueError(f"metric {self.name}: type must be one of {TYPES}, "
                             f"not {self.type!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name}: a counter's name ends in _total")
        object.__setattr__(self, "labels", tuple(self.labels))
        for label in self.labels:
            if not isinstance(label, str) or not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"metric {self.name}: {label!r} is not a label name")
        if self.type == "histogram" and "le" in self.labels:
            raise ValueError(f"histogram {self.name}: 'le' is the buckets' own label")


@dataclasses.dataclass(frozen=True)
class Histogram:
    """A histogram's value: ``buckets`` as (upper bound, cumulative count),
    in increasing bounds, the last ``math.inf`` (its count is the total);
    ``sum`` of the observed values."""

    buckets: tuple[tuple[float, float], ...]
    sum: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0


@dataclasses.dataclass(frozen=True)
class Sample:
    """One value of a metric: ``labels`` are the label values, in the order of
    the Metric's label names."""

    labels: tuple[str, ...]
    value: float | Histogram
