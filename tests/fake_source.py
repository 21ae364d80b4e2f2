"""A metrics source like the ones otpy_pool will register: it finds the
processes that say (by annotation) they publish counts, and reads those
counts from each one's shared memory, never calling the process."""

from __future__ import annotations

import math
import mmap
import os
import struct

import otpy
from otpy.lowlevel import annotate
from otpy.metrics import Histogram, Metric, NodeView, Sample

MEMFD = "otpy-test-fake-counts"
JOBS = Metric("otpy_fake_jobs_total", "counter", "Jobs done.", ("kind",))
DURATION = Metric("otpy_fake_job_duration_seconds", "histogram", "How long jobs took.",
                  ("kind",), "s")
_COUNT = struct.Struct("<Q")


class FakeSource:
    metrics = (JOBS, DURATION)

    def __init__(self) -> None:
        self.collected = 0

    def collect(self, view: NodeView) -> dict:
        self.collected += 1
        jobs, durations = [], []
        for row in view.rows:
            kind = row["meta"].get("fake_jobs")
            if kind is None:
                continue
            fd = view.open_memfd(row["os_pid"], MEMFD)
            try:
                done = _COUNT.unpack(os.pread(fd, _COUNT.size, 0))[0]
            finally:
                os.close(fd)
            jobs.append(Sample((kind,), done))
            # every job "took" 50 ms: all in the 0.1 s bucket
            durations.append(Sample((kind,), Histogram(((0.1, done), (math.inf, done)),
                                                       0.05 * done)))
        return {JOBS.name: jobs, DURATION.name: durations}


def job_worker(kind: str, report_to: otpy.Pid) -> None:
    """Counts each "job" in a memfd of its own, as a pool worker will."""
    fd = os.memfd_create(MEMFD)
    os.ftruncate(fd, _COUNT.size)
    counts = mmap.mmap(fd, _COUNT.size)
    annotate(otpy.self(), fake_jobs=kind)
    otpy.send(report_to, ("ready", otpy.self()))
    while True:
        if otpy.receive() == "job":
            _COUNT.pack_into(counts, 0, _COUNT.unpack_from(counts, 0)[0] + 1)
            otpy.send(report_to, "done")
