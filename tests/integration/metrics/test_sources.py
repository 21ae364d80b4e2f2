"""The extension point otpy_pool will use: a registered source's figures go
out with the node's, read from a process's shared memory, through every
exporter; what a source gets wrong stays with that source."""

from __future__ import annotations

import contextlib

import pytest

import otpy
import otpy.metrics
from fake_source import DURATION, JOBS, FakeSource, job_worker
from metrics_helpers import scrape, series, value
from otpy.metrics import Metric, Sample
from otpy.testing import wait_for


@contextlib.contextmanager
def registered(source):
    otpy.metrics.register_source(source)
    try:
        yield source
    finally:
        otpy.metrics.unregister_source(source)


def start_worker(kind: str) -> otpy.Pid:
    otpy.spawn_link(job_worker, kind, otpy.self())
    return otpy.receive(timeout=10, match=lambda m: m[:1] == ("ready",))[1]


def run_jobs(pid: otpy.Pid, n: int) -> None:
    for _ in range(n):
        otpy.send(pid, "job")
        otpy.receive(timeout=10, match=lambda m: m == "done")


def test_a_registered_source_is_scraped_with_the_node(otpy_tree):
    worker = start_worker("resize")
    run_jobs(worker, 3)
    with registered(FakeSource()), otpy.metrics.serve(0) as server:
        # the annotation is one-way: wait until the node's tables have it
        figures = wait_for(lambda: (f := scrape(server.url)) and series(
            f, "otpy_fake_jobs_total") and f)
        assert value(figures, "otpy_fake_jobs_total", kind="resize") == 3
        assert value(figures, "otpy_fake_job_duration_seconds_bucket", kind="resize",
                     le="0.1") == 3
        assert value(figures, "otpy_fake_job_duration_seconds_count", kind="resize") == 3
        assert value(figures, "otpy_fake_job_duration_seconds_sum",
                     kind="resize") == pytest.approx(0.15)
        assert value(figures, "otpy_processes") == len(otpy.processes())
    with otpy.metrics.serve(0) as server:
        assert not series(scrape(server.url), "otpy_fake_jobs_total")  # unregistered: gone
    otpy.exit(worker, "kill")


def test_a_metric_is_declared_by_one_source_only():
    class Twin:
        metrics = (Metric("otpy_processes", "gauge", "Again."),)

        def collect(self, view):
            return {}

    with pytest.raises(ValueError, match="otpy_processes is already declared"):
        otpy.metrics.register_source(Twin())
    with registered(FakeSource()) as source:
        with pytest.raises(ValueError, match="already registered"):
            otpy.metrics.register_source(source)
    with pytest.raises(ValueError, match="not registered"):
        otpy.metrics.unregister_source(source)
    with pytest.raises(TypeError, match="a source has metrics"):
        otpy.metrics.register_source(object())


@pytest.mark.parametrize("broken", [
    lambda view: 1 / 0,
    lambda view: {JOBS.name: [Sample((), 1)]},                     # a label value missing
    lambda view: {JOBS.name: [Sample(("a",), "many")]},            # not a number
    lambda view: {DURATION.name: [Sample(("a",), 2.0)]},           # a histogram needs buckets
    lambda view: {"otpy_fake_undeclared": [Sample((), 1)]},
])
def test_a_failing_source_is_left_out_and_the_rest_goes_out(otpy_tree, broken):
    class Broken(FakeSource):
        def collect(self, view):
            return broken(view)

    with registered(Broken()), otpy.metrics.serve(0) as server:
        figures = scrape(server.url)
    assert not series(figures, "otpy_fake_jobs_total")
    assert value(figures, "otpy_processes") == len(otpy.processes())


@pytest.mark.parametrize("args, error", [
    (("otpy processes", "gauge", "h"), "not a Prometheus name"),
    (("otpy_things", "counter", "h"), "ends in _total"),
    (("otpy_things", "summary", "h"), "type must be one of"),
    (("otpy_things", "gauge", "h", ("pid-serial",)), "not a label name"),
    (("otpy_things", "gauge", "h", ("__name",)), "not a label name"),
    (("otpy_things_seconds", "histogram", "h", ("le",)), "the buckets' own label"),
])
def test_a_metric_that_breaks_prometheus_conventions_is_refused(args, error):
    with pytest.raises(ValueError, match=error):
        Metric(*args)
