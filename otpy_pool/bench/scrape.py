"""What a Prometheus scrape costs the pool's hot path: a session's no-op
command's p50 with the program's metrics endpoint scraped every 100 ms,
beside the same without (``python -m otpy_pool.bench``:
``pool_execute_scraped_us``, ``pool_execute_unscraped_us`` and their ratio
``execute_scraped_over_unscraped_p50``; the goal: within 3%).

The endpoint is ``otpy.metrics.serve`` in this program, as an application
would run it; the scraper is another process (as Prometheus is), which
reads ``/metrics`` every 100 ms while told to. The commands run in blocks,
scraped and not in turn, so that both see the same load.
"""

from __future__ import annotations

import importlib.util
import time
import urllib.request
from typing import Any

import otpy
from otpy import lowlevel
from otpy.bench import Skipped, summarize

from otpy_pool import Pool

INTERVAL = 0.1  # Prometheus' shortest usual scrape interval
BLOCK = 0.5  # seconds per block, scraped or not: several scrapes each


def _scraper(url: str, parent: otpy.Pid) -> None:
    """Scrape ``url`` every INTERVAL while "on"; report the scrapes at "stop"."""
    on, scrapes = False, 0
    while True:
        try:
            message = otpy.receive(timeout=INTERVAL if on else None)
        except otpy.Timeout:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            scrapes += 1
            continue
        if message == "stop":
            otpy.send(parent, ("scrapes", scrapes))
            return
        on = message == "on"


def scraped_execute(blocks: int, warmup: int, worker: Any) -> dict[str, Any]:
    """p50/p99 (µs) of ``execute("noop", session=...)`` on a pool of 2
    ``worker``s, scraped every 100 ms and not, in ``blocks`` alternating
    blocks of each."""
    if importlib.util.find_spec("prometheus_client") is None:
        raise Skipped("prometheus_client is not installed: pip install 'otpy[metrics]'")
    import otpy.metrics

    pool = Pool.start_link(worker, size=2)
    server = otpy.metrics.serve(0)
    scraper = otpy.spawn_link(_scraper, server.url, otpy.self())
    samples: dict[bool, list[int]] = {True: [], False: []}
    try:
        for i in range(warmup):
            pool.execute("noop", i, session="bench")
        for block in range(2 * blocks):
            scraped = block % 2 == 1
            otpy.send(scraper, "on" if scraped else "off")
            end = time.monotonic() + BLOCK
            while time.monotonic() < end:
                t = time.perf_counter_ns()
                pool.execute("noop", None, session="bench")
                samples[scraped].append(time.perf_counter_ns() - t)
        otpy.send(scraper, "stop")
        scrapes = otpy.receive(timeout=30, match=lambda m: type(m) is tuple
                               and m[0] == "scrapes")[1]
    finally:
        lowlevel.stop_process(scraper, "kill", timeout=5)
        server.close()
        pool.stop()
    return {"pool_execute_scraped_us": summarize(samples[True], 1e3),
            "pool_execute_unscraped_us": summarize(samples[False], 1e3),
            "scrapes_during_run": scrapes}
