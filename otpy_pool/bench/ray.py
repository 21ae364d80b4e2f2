"""A session command on a worker placed on Ray, beside a bare Ray actor
call, in one run (``python -m otpy_pool.bench``: ``ray_execute_us`` and
``ray_actor_call_us``; skipped without Ray).

Both go from this program to an actor on a local cluster: the pool's path
is caller -> stand-in (an otpy call) -> actor (a Ray call) and back; the
bare one is this program as a Ray driver calling a plain actor. Samples
alternate between the two so that both see the same load.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

from otpy.bench import Skipped, summarize

from otpy_pool import Pool, RayPlacement, Worker, command
from otpy_pool.testing import ray_cluster


class Echo(Worker):
    @command
    def noop(self, session: Any, x: Any = None) -> Any:
        return x


class Bare:
    """The plain Ray actor (no concurrency groups, no sessions)."""

    def noop(self, x: Any = None) -> Any:
        return x


def ray_calls(n: int, warmup: int) -> dict[str, dict]:
    """p50/p99 of a no-op session command on a Ray-placed worker and of a
    bare Ray actor call, on a one-node local cluster."""
    if importlib.util.find_spec("ray") is None:
        raise Skipped("ray is not installed: pip install 'otpy[ray]'")
    import ray

    with ray_cluster(nodes=1, cpus=2) as cluster:
        pool = Pool.start_link(Echo, size=1, placement=RayPlacement(address=cluster.address))
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            bare: Any = ray.remote(num_cpus=1)(Bare).remote()
            ours, theirs = [], []
            for i in range(warmup + n):
                t = time.perf_counter_ns()
                pool.execute("noop", i, session="bench")
                ours.append(time.perf_counter_ns() - t)
                t = time.perf_counter_ns()
                ray.get(bare.noop.remote(i))
                theirs.append(time.perf_counter_ns() - t)
            return {"ray_execute_us": summarize(ours[warmup:], 1e3),
                    "ray_actor_call_us": summarize(theirs[warmup:], 1e3)}
        finally:
            ray.shutdown()
            pool.stop()
