"""Prometheus: a collector for prometheus_client registries, and ``serve``,
an HTTP endpoint of its own. prometheus_client (the ``metrics`` extra) does
the exposition formats, content negotiation and the HTTP server: well-kept
code that scrapers already agree with."""

from __future__ import annotations

import threading
from typing import Any, Iterator

from ._model import Histogram, Metric, Sample, require
from ._reading import READ_TIMEOUT, Reading
from ._sources import sources

JOIN_TIMEOUT = 5.0  # the server thread ends at once after shutdown(); this only bounds it


class NodeCollector:
    """A prometheus_client collector of one node: its own figures and every
    registered source's, read fresh at each scrape (one signal to the node's
    zygote; no process is called)::

        from prometheus_client import REGISTRY
        REGISTRY.register(otpy.metrics.NodeCollector())

    ``node``: a node id or its program's OS pid; None is this program's own
    node. ``timeout``: how long a scrape waits for the zygote's tables.
    """

    def __init__(self, node: str | int | None = None, *, timeout: float = READ_TIMEOUT) -> None:
        self._core = require("prometheus_client.core", "metrics", "otpy.metrics.NodeCollector")
        self._utils = require("prometheus_client.utils", "metrics", "otpy.metrics.NodeCollector")
        self._reading = Reading(node, timeout)

    @property
    def node(self) -> str:
        return self._reading.node

    def describe(self) -> list[Any]:
        """The families, without reading the node (a registry checks names with it)."""
        return [self._family(m, []) for s in sources() for m in s.metrics]

    def collect(self) -> Iterator[Any]:
        for metric, samples in self._reading.read().values():
            yield self._family(metric, samples)

    def close(self) -> None:
        """Let go of the node (its open files); unregister the collector first."""
        self._reading.close()

    def _family(self, metric: Metric, samples: list[Sample]) -> Any:
        core = self._core
        labels = list(metric.labels)
        if metric.type == "histogram":
            family = core.HistogramMetricFamily(metric.name, metric.help, labels=labels)
            for s in samples:
                value = s.value
                assert isinstance(value, Histogram)
                buckets = [(self._utils.floatToGoString(bound), count)
                           for bound, count in value.buckets]
                family.add_metric(list(s.labels), buckets, value.sum)
            return family
        kind = core.CounterMetricFamily if metric.type == "counter" else core.GaugeMetricFamily
        family = kind(metric.name, metric.help, labels=labels)
        for s in samples:
            family.add_metric(list(s.labels), s.value)
        return family


class MetricsServer:
    """A running ``serve`` endpoint: ``url``, ``address``; ``close()`` stops it."""

    def __init__(self, httpd: Any, thread: threading.Thread, collector: NodeCollector) -> None:
        self._httpd = httpd
        self._thread = thread
        self.collector = collector
        host, port = httpd.server_address[:2]
        self.address: tuple[str, int] = (host, port)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket and let go of the node."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(JOIN_TIMEOUT)
        self._httpd.server_close()
        self.collector.close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url} node {self.collector.node}>"


def serve(port: int, addr: str = "127.0.0.1", *, node: str | int | None = None,
          timeout: float = READ_TIMEOUT) -> MetricsServer:
    """Serve the node's metrics at ``http://addr:port/metrics`` from a daemon
    thread of this program, until ``close()``.

    ``addr`` is the loopback by default: the figures name processes, so
    listening beyond this machine is a choice to make (``"0.0.0.0"``).
    ``port`` 0 takes a free port (see ``.address``). ``node``: this program's
    own node by default, or any node of this OS user by id or OS pid.
    """
    prom = require("prometheus_client", "metrics", "otpy.metrics.serve")
    check_address(port, addr)
    collector = NodeCollector(node, timeout=timeout)
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        httpd, thread = prom.start_http_server(port, addr, registry)
    except OSError as exc:
        collector.close()
        raise OSError(exc.errno, f"otpy.metrics: cannot listen on {addr}:{port}: "
                                 f"{exc.strerror or exc}") from None
    return MetricsServer(httpd, thread, collector)


def check_address(port: Any, addr: Any) -> None:
    """A port and an address to listen on, refused with what is wrong."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535 (0: any free port), "
                         f"not {port!r}")
    if not isinstance(addr, str) or not addr:
        raise ValueError(f"addr must be an address or host name to listen on, not {addr!r}")
