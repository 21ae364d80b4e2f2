"""The node's and a pool's metrics for Prometheus, from the program itself.

A small tree (a steady worker, one that crashes every --crash-every
seconds, and a pool of two workers the program sends a command every 50 ms,
one in five of which fails) and ``otpy.metrics.serve``: an HTTP endpoint a
Prometheus server scrapes (the program prints its URL). Try it from another
terminal::

    curl -s http://127.0.0.1:9464/metrics | grep '^otpy_'
    curl -s http://127.0.0.1:9464/metrics | grep '^otpy_pool_commands_total'

The same figures from outside any program, with no change to it:
``python -m otpy.observer NODE --prometheus 127.0.0.1:9464``. Needs
``pip install 'otpy[metrics]'``.

Run: python examples/metrics.py [--port 9464] [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import otpy
import otpy.metrics
from otpy_pool import Pool, Worker, command


class Flaky(otpy.GenServer):
    """Crashes ``after`` seconds after it starts (a timer message, not a sleep)."""

    def init(self, after: float) -> None:
        otpy.send_after(otpy.self(), "crash", after)

    def handle_info(self, message):
        raise RuntimeError("crashed on purpose")


class Steady(otpy.GenServer):
    def handle_call(self, request, caller):
        return "ok"


class Lookup(Worker):
    """The pool's workers: ``find`` fails for a key that is a multiple of 5."""

    @command
    def find(self, session, key):
        if key % 5 == 0:
            raise KeyError(key)  # counted as outcome="error"
        return key * 2


def traffic(pool: Pool, seconds: float | None) -> None:
    """A command every 50 ms until ``seconds`` have passed (None: until Ctrl-C)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for key in itertools.count(1):
        try:
            pool.execute("find", key)
        except KeyError:
            pass
        left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
        if left <= 0:
            return
        try:  # waits for an otpy message that never comes, so Ctrl-C still stops it
            otpy.receive(timeout=left, match=lambda m: m == "stop")
        except otpy.Timeout:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9464, help="0: any free port (default 9464)")
    parser.add_argument("--addr", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--crash-every", type=float, default=2.0,
                        help="seconds between the flaky worker's crashes (default 2)")
    args = parser.parse_args()

    otpy.Supervisor.start_link([Steady.child_spec(name="steady"),
                                Flaky.child_spec(args.crash_every, name="flaky"),
                                Pool.child_spec(Lookup, name="lookup", size=2)],
                               name="app", max_restarts=100, max_seconds=10)
    try:
        server = otpy.metrics.serve(args.port, args.addr)
    except (ImportError, OSError, ValueError) as exc:  # a missing extra, a taken port...
        print(f"metrics: {exc}", file=sys.stderr)
        return 1
    print(f"metrics of node {otpy.self().node} at {server.url}", flush=True)
    try:
        traffic(Pool("lookup"), args.duration)
    except KeyboardInterrupt:
        print("\nCtrl-C", flush=True)
    server.close()
    otpy.Supervisor.stop("app", "shutdown")
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
