"""otpy.metrics through OpenTelemetry: the same figures as observable
instruments, collected by the SDK's in-memory reader."""

from __future__ import annotations

import os
import signal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import otpy
import otpy.metrics
from fake_source import FakeSource, job_worker
from helpers import expect_down
from otpy import observer
from otpy.testing import wait_for
from servers import Counter


@pytest.fixture
def otel():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = otpy.metrics.instrument(provider)
    try:
        yield reader, instruments
    finally:
        instruments.close()
        provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, dict]:
    """name -> {frozenset(attributes): value}, and the metric's data kind."""
    out = {}
    data = reader.get_metrics_data()  # None when no instrument reported anything
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = {frozenset(p.attributes.items()): p.value
                          for p in metric.data.data_points}
                out[metric.name] = {"points": points, "kind": type(metric.data).__name__,
                                    "monotonic": getattr(metric.data, "is_monotonic", None),
                                    "unit": metric.unit}
    return out


def test_the_node_as_observable_instruments(otpy_tree, otel):
    reader, _ = otel
    key = frozenset({("supervisor", "app"), ("child", "crashy")})
    earlier = collect(reader).get("otpy_supervisor_restarts")  # none before a first restart
    before = earlier["points"].get(key, 0) if earlier else 0
    otpy_tree.start_child(otpy.Supervisor.child_spec(
        [Counter.child_spec(id="crashy")], id="app", name="app"))
    crashy = otpy.Supervisor.which_children("app")[0].pid
    ref = otpy.monitor(crashy)
    os.kill(crashy.os_pid, signal.SIGKILL)
    expect_down(ref)
    otpy.Supervisor.which_children("app")
    figures = collect(reader)
    snap = observer.snapshot()

    assert figures["otpy_processes"]["points"] == {frozenset(): len(otpy.processes())}
    assert figures["otpy_processes"]["kind"] == "Gauge"
    spawns = figures["otpy_spawns"]
    assert (spawns["kind"], spawns["monotonic"]) == ("Sum", True)
    assert spawns["points"] == {frozenset(): snap["counts"]["spawns"]}
    assert figures["otpy_supervisor_restarts"]["points"][key] - before == 1  # counts only grow
    exits = figures["otpy_exits"]["points"]
    assert {dict(k)["reason"]: v for k, v in exits.items()} == snap["counts"]["exits"]
    assert figures["otpy_process_resident_memory_bytes"]["unit"] == "By"


def test_a_source_registered_later_gets_instruments_and_one_reading_per_collection(
        otpy_tree, otel):
    reader, instruments = otel
    source = FakeSource()
    otpy.metrics.register_source(source)
    try:
        assert {"otpy_fake_jobs", "otpy_fake_job_duration_seconds_count",
                "otpy_fake_job_duration_seconds_sum"} <= set(instruments.names)
        otpy.spawn_link(job_worker, "resize", otpy.self())
        worker = otpy.receive(timeout=10, match=lambda m: m[:1] == ("ready",))[1]
        otpy.send(worker, "job")
        otpy.receive(timeout=10, match=lambda m: m == "done")
        # the annotation is one-way: wait until the node's tables have it
        figures = wait_for(lambda: (f := collect(reader)).get("otpy_fake_jobs") and f)
        key = frozenset({("kind", "resize")})
        assert figures["otpy_fake_jobs"]["points"] == {key: 1}
        assert figures["otpy_fake_job_duration_seconds_count"]["points"] == {key: 1}
        assert figures["otpy_fake_job_duration_seconds_sum"]["points"] == {
            key: pytest.approx(0.05)}
        before = source.collected
        collect(reader)
        assert source.collected == before + 1  # every instrument, one reading
        otpy.exit(worker, "kill")
    finally:
        otpy.metrics.unregister_source(source)


def test_closed_instruments_report_nothing(otpy_tree, otel):
    reader, instruments = otel
    assert collect(reader)["otpy_processes"]["points"]
    instruments.close()
    assert collect(reader) == {}
