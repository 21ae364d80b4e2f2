"""OpenTelemetry: the same figures as observable instruments of a meter, for
an application that exports through its own meter provider (the ``otel``
extra: opentelemetry-api; the application brings the SDK and exporters)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import otpy
from ._model import Metric, require
from ._reading import READ_TIMEOUT, Figures, Reading
from ._sources import Source, add_listener, remove_listener, sources


class Instruments:
    """The observable instruments :func:`instrument` made; ``close()`` stops them
    reporting (OpenTelemetry has no way to remove an instrument)."""

    def __init__(self, meter: Any, observation: type, reading: Reading) -> None:
        self._meter = meter
        self._observation = observation
        self._reading = reading
        self._lock = threading.Lock()
        self._made: dict[str, None] = {}  # names, in the order made
        # One reading per collection: the SDK calls each instrument's callback
        # once per collection, so an instrument asking again means a new one.
        self._latest: Figures | None = None
        self._consumed: set[str] = set()
        self._closed = False
        for source in sources():
            self._add(source)
        add_listener(self._add)  # sources registered later get instruments too

    @property
    def names(self) -> list[str]:
        """The instruments' names, in the order they were made."""
        with self._lock:
            return list(self._made)

    def _add(self, source: Source) -> None:
        for metric in source.metrics:
            if metric.type == "histogram":
                # No asynchronous histogram in OpenTelemetry: its count and sum as counters.
                self._make(f"{metric.name}_count", "counter", metric, lambda h: h.count)
                self._make(f"{metric.name}_sum", "counter", metric, lambda h: h.sum)
            else:
                name = metric.name.removesuffix("_total")  # the exporter adds its own suffix
                self._make(name, metric.type, metric, lambda v: v)

    def _make(self, name: str, kind: str, metric: Metric, value: Callable[[Any], float]) -> None:
        with self._lock:
            if name in self._made:
                return
            self._made[name] = None
        create = (self._meter.create_observable_counter if kind == "counter"
                  else self._meter.create_observable_gauge)
        create(name, callbacks=[self._callback(name, metric, value)], unit=metric.unit,
               description=metric.help)

    def _callback(self, name: str, metric: Metric,
                  value: Callable[[Any], float]) -> Callable[[Any], Iterable[Any]]:
        def observe(_options: Any) -> list[Any]:
            figures = self._figures(name)
            if metric.name not in figures:
                return []
            _, samples = figures[metric.name]
            return [self._observation(value(s.value), dict(zip(metric.labels, s.labels)))
                    for s in samples]
        return observe

    def _figures(self, name: str) -> Figures:
        with self._lock:
            if self._closed:
                return {}
            if self._latest is None or name in self._consumed:
                self._latest = self._reading.read()
                self._consumed = set()
            self._consumed.add(name)
            return self._latest

    def close(self) -> None:
        remove_listener(self._add)
        with self._lock:
            self._closed = True
            self._latest = None
        self._reading.close()


def instrument(meter_provider: Any = None, *, node: str | int | None = None,
               timeout: float = READ_TIMEOUT) -> Instruments:
    """Make the node's figures (and every registered source's) observable
    instruments of an ``otpy`` meter of ``meter_provider`` (the global one by
    default). Counters become observable counters (named without ``_total``),
    gauges observable gauges; a histogram its ``_count`` and ``_sum`` as
    counters. Each collection reads the node once."""
    api = require("opentelemetry.metrics", "otel", "otpy.metrics.instrument")
    meter = api.get_meter("otpy", otpy.__version__, meter_provider=meter_provider)
    return Instruments(meter, api.Observation, Reading(node, timeout))
