"""Sources: what produces metrics from one reading of a node, and the
registry the exporters read them from.

A source declares its metrics up front (OpenTelemetry makes its instruments
from them) and, per reading, turns a ``NodeView`` into samples. The node's
own figures are one source (``_node.NodeSource``); otpy_pool registers its
own (pool, breaker, limiter, recovery) with :func:`register_source`, and
every exporter, Prometheus or OpenTelemetry, picks them up without a change
here. A package's sources are also found by the entry point group
``otpy.metrics_sources`` (each entry: a callable returning a Source),
loaded at the first reading: how otpy_pool's figures reach ``python -m
otpy.observer --prometheus`` too, with otpy importing nothing of it. A
source reads what the node already publishes (the page, the status table, a
process's shared memory through ``open_memfd``): never a call into a
process.
"""

from __future__ import annotations

import importlib.metadata
import threading
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from ..lowlevel import logger
from ..lowlevel.observation import PageRow, process_label
from ..observer import NodeReader
from ._model import Metric, Sample


class NodeView:
    """One reading of a node, as sources see it."""

    def __init__(self, reader: NodeReader, tables: dict[str, Any]) -> None:
        self._reader = reader
        self.tables = tables  # the page as the zygote wrote it (see NodeReader.read_tables)
        self.node: str = tables["node"]
        self.started_at: float = tables["started_at"]
        self.counts: dict[str, Any] = tables["counts"]
        self.rows: list[PageRow] = tables["processes"]

    def mailbox(self, row: PageRow) -> int:
        """Messages waiting in the process's mailbox (0 once it is gone)."""
        slot = self._reader.mailbox(row["pid"])
        return 0 if slot is None else slot[1]

    @staticmethod
    def label(row: PageRow) -> str:
        """What the process is called in labels: its name, else ``[child id]``, ..."""
        meta = row["meta"]
        return process_label(row["name"], row["program"], meta.get("child_id"),
                             meta.get("behaviour"))

    def open_memfd(self, os_pid: int, name: str) -> int:
        """Open, read-only, the memfd ``name`` held by the process ``os_pid``
        (a process's counters in shared memory, say); the caller closes it."""
        return self._reader.open_memfd(os_pid, name)


class Source(Protocol):
    """Produces metrics from a reading of a node (see the module's docstring).

    ``metrics``: every metric it may produce, declared once. ``collect(view)``
    returns samples by metric name; a metric it leaves out has no samples in
    that reading. It must be quick and must not call into any process.
    """

    @property
    def metrics(self) -> Sequence[Metric]: ...

    def collect(self, view: NodeView) -> Mapping[str, Iterable[Sample]]: ...


ENTRY_POINTS = "otpy.metrics_sources"

_lock = threading.Lock()
_plugins_lock = threading.RLock()  # a listener may ask for sources() while they load
_plugins_loaded = False
_sources: list[Source] = []
_listeners: list[Callable[[Source], None]] = []  # exporters that instrument new sources


def register_source(source: Source) -> None:
    """Add a source to every exporter of otpy.metrics, those already running
    included. ValueError if it declares a metric another source declares."""
    metrics = list(getattr(source, "metrics", None) or ())
    if not all(isinstance(m, Metric) for m in metrics) or not callable(
            getattr(source, "collect", None)):
        raise TypeError(f"a source has metrics (a sequence of Metric) and collect(view), "
                        f"not {source!r}")
    with _lock:
        if any(s is source for s in _sources):
            raise ValueError(f"{source!r} is already registered")
        taken = {m.name: s for s in _sources for m in s.metrics}
        names = [m.name for m in metrics]
        for name in names:
            if name in taken:
                raise ValueError(f"metric {name} is already declared by {taken[name]!r}")
            if names.count(name) > 1:
                raise ValueError(f"{source!r} declares metric {name} twice")
        _sources.append(source)
        listeners = list(_listeners)
    for listener in listeners:
        listener(source)


def unregister_source(source: Source) -> None:
    """Remove a source (ValueError if it was not registered). An OpenTelemetry
    instrument made for it stays, and reports nothing from then on."""
    with _lock:
        for i, s in enumerate(_sources):
            if s is source:
                del _sources[i]
                return
    raise ValueError(f"{source!r} is not registered")


def sources() -> list[Source]:
    """The registered sources, in registration order (the node's first), the
    entry points' loaded first if they were not yet."""
    load_entry_points()
    with _lock:
        return list(_sources)


def add_listener(listener: Callable[[Source], None]) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[Source], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def load_entry_points() -> None:
    """Register the sources of the ``otpy.metrics_sources`` entry points, once.
    One that fails to load is logged and left out."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    with _plugins_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
            try:
                register_source(entry.load()())
            except Exception as exc:
                logger().warning("metrics source entry point failed", entry=entry.value,
                                 error=f"{type(exc).__name__}: {exc}")
