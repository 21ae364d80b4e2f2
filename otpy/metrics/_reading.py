"""One node, read for exporters: a NodeReader kept open between readings,
and every registered source run over each reading."""

from __future__ import annotations

import threading
from typing import Any

import otpy
from ..lowlevel import check_timeout, logger
from ..observer import NodeNotFound, NodeReader, find_node
from ._model import Histogram, Metric, Sample
from ._sources import NodeView, sources

READ_TIMEOUT = 2.0

Figures = dict[str, tuple[Metric, list[Sample]]]  # by metric name, in declaration order


class Reading:
    """Readings of one node: ``node`` is a node id or its program's OS pid;
    None is the calling program's own node (started if it has not yet, and
    found again if it was shut down and started anew). Thread-safe: an HTTP
    server may scrape from several threads at once."""

    def __init__(self, node: str | int | None = None, timeout: float = READ_TIMEOUT) -> None:
        if node is not None and not isinstance(node, (str, int)) or isinstance(node, bool):
            raise TypeError(f"node must be a node id, an OS pid or None, not {node!r}")
        self.timeout = check_timeout(timeout, "timeout")
        self.which = node
        self._lock = threading.Lock()
        self._reader: NodeReader | None = None
        self._open()  # at once: an unknown node is an error here, not at the first scrape

    def _open(self) -> NodeReader:
        if self.which is None:
            otpy.self()  # a program is a node from its first otpy call
        self._reader = NodeReader(find_node(self.which))
        return self._reader

    @property
    def node(self) -> str:
        """The node id read (the current one, for the program's own node)."""
        with self._lock:
            return (self._reader or self._open()).node.node

    def read(self) -> Figures:
        """Fresh figures of every registered source."""
        with self._lock:
            reader = self._reader or self._open()
            try:
                tables = reader.read_tables(self.timeout)
            except NodeNotFound:
                if self.which is not None:
                    raise
                reader.close()  # this program's node was shut down: read the new one
                reader = self._open()
                tables = reader.read_tables(self.timeout)
            return collect(NodeView(reader, tables))

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def collect(view: NodeView) -> Figures:
    """Run every source over one view. A source that fails is logged and left
    out of this reading: the node's figures and other sources' still go out."""
    figures: Figures = {}
    for source in sources():
        try:
            produced: dict[str, Any] = dict(source.collect(view))
            batch = []
            for metric in source.metrics:
                samples = list(produced.pop(metric.name, ()))
                for s in samples:
                    _check(metric, s)
                batch.append((metric, samples))
            if produced:
                raise ValueError(f"samples for undeclared metrics {sorted(produced)}")
        except Exception as exc:
            logger().warning("metrics source failed", source=repr(source),
                             error=f"{type(exc).__name__}: {exc}")
            continue
        figures.update((metric.name, (metric, samples)) for metric, samples in batch)
    return figures


def _check(metric: Metric, sample: Any) -> None:
    """A source's sample fits its metric: as many label values as names, a
    Histogram for a histogram and a number for anything else."""
    if not isinstance(sample, Sample) or len(sample.labels) != len(metric.labels):
        raise ValueError(f"{metric.name}: {sample!r} is not a Sample with "
                         f"labels {metric.labels}")
    if (metric.type == "histogram") != isinstance(sample.value, Histogram) or (
            not isinstance(sample.value, (int, float, Histogram))
            or isinstance(sample.value, bool)):
        raise ValueError(f"{metric.name}: a {metric.type} cannot have the value "
                         f"{sample.value!r}")
