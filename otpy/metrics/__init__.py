"""otpy.metrics: a node's figures for Prometheus and OpenTelemetry.

Processes alive, spawns, exits by reason class, restarts per supervisor and
child, restart intensity reached, mailboxes and memory of the largest
processes (see docs/metrics.md). A reading is what the observer reads: one
signal to the node's zygote, which writes its tables and counts to a page
in shared memory; no process of the node is called, and a node nobody reads
pays nothing.

- ``serve(port, addr="127.0.0.1")``: an HTTP ``/metrics`` endpoint
  (the ``metrics`` extra: prometheus_client).
- ``NodeCollector()``: the same, for an application's own prometheus_client
  registry.
- ``instrument(meter_provider)``: observable instruments for OpenTelemetry
  (the ``otel`` extra).
- ``python -m otpy.observer NODE --prometheus 127.0.0.1:9464``: another
  program's node, with no change to it.
- ``register_source(source)``: more figures from the same readings (how
  otpy_pool adds its pools, breakers, limiters and recovery): a ``Source``
  declares its ``Metric``s and turns a ``NodeView`` into ``Sample``s.

Importing this module imports neither prometheus_client nor OpenTelemetry;
what needs one says which extra to install (``MissingExtra``) when called.
"""

from ._model import Histogram, Metric, MissingExtra, Sample
from ._node import LARGEST, NodeSource
from ._otel import Instruments, instrument
from ._prometheus import MetricsServer, NodeCollector, serve
from ._reading import Reading
from ._sources import NodeView, Source, register_source, sources, unregister_source

register_source(NodeSource())  # the node's own figures come first in every exporter

__all__ = ["Histogram", "Instruments", "LARGEST", "Metric", "MetricsServer", "MissingExtra",
           "NodeCollector", "NodeSource", "NodeView", "Reading", "Sample", "Source",
           "instrument", "register_source", "serve", "sources", "unregister_source"]
