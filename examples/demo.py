"""A small application under supervision, running until Ctrl-C.

    app (Supervisor, one_for_one)
    ├─ config   a GenServer holding settings
    ├─ cache    a Supervisor (one_for_all) of two shards
    ├─ jobs     a DynamicSupervisor of three job workers that tick
    ├─ flaky    a worker that crashes now and then, on purpose
    └─ notebook an otpy_pool.Pool of two workers holding sessions

Every few seconds the demo also SIGKILLs one cache shard: the cache
supervisor restarts both shards (one_for_all). And it SIGKILLs the worker
holding the session "alice" in the notebook pool: her next command is
re-bound to another worker, which first replays her ``remember`` commands,
so she still remembers everything.

Crash reports and restarts are
logged; point the observer at the node to watch it live (the demo prints the
command). Ctrl-C, or the end of --duration, stops the tree cleanly.

Run: python examples/demo.py [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time

import otpy
from otpy_pool import Pool, Worker, command


class Config(otpy.GenServer):
    def init(self, **settings) -> None:
        self.settings = settings

    def handle_call(self, key, caller):
        return self.settings.get(key)


class Shard(otpy.GenServer):
    def init(self, index: int) -> None:
        self.index = index
        self.entries: dict = {}

    def handle_call(self, request, caller):
        op, key, *value = request
        if op == "put":
            self.entries[key] = value[0]
        return self.entries.get(key)


class Job(otpy.GenServer):
    """Ticks every ``period`` seconds (a timer message, not a sleep)."""

    def init(self, period: float) -> None:
        self.period = period
        self.ticks = 0
        otpy.send_after(otpy.self(), "tick", period)

    def handle_info(self, message):
        if message == "tick":
            self.ticks += 1
            otpy.send_after(otpy.self(), "tick", self.period)

    def handle_call(self, request, caller):
        return self.ticks


class Flaky(otpy.GenServer):
    """Crashes ``after`` seconds into each life: the supervisor restarts it."""

    def init(self, after: float) -> None:
        otpy.send_after(otpy.self(), "crash", after)

    def handle_info(self, message):
        if message == "crash":
            raise RuntimeError("flaky crashed on purpose")


class Notebook(Worker):
    """A session's facts live in its worker; ``remember`` is replayed after a crash."""

    @command(replay=True)
    def remember(self, session, fact: str) -> int:
        session.state.setdefault("facts", []).append(fact)
        return len(session.state["facts"])

    @command
    def recall(self, session) -> list:
        return list(session.state.get("facts", []))


def application(crash_after: float) -> list[otpy.ChildSpec]:
    shards = [Shard.child_spec(i, id=f"shard-{i}", name=f"shard-{i}") for i in range(2)]
    return [
        Config.child_spec(id="config", name="config", region="eu", shards=2),
        otpy.Supervisor.child_spec(shards, id="cache", name="cache", strategy="one_for_all"),
        otpy.DynamicSupervisor.child_spec(id="jobs", name="jobs"),
        Flaky.child_spec(crash_after, id="flaky", name="flaky"),
        Pool.child_spec(Notebook, size=2, name="notebook", id="notebook"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--crash-every", type=float, default=4.0,
                        help="seconds between the flaky worker's crashes (default 4)")
    args = parser.parse_args()

    otpy.Supervisor.start_link(application(args.crash_every), name="app",
                               max_restarts=10, max_seconds=10)
    for n in range(3):
        otpy.DynamicSupervisor.start_child("jobs", Job.child_spec(0.5, id=f"job-{n}"))
    node = otpy.self().node
    print(f"node {node} is running its application tree (os pid {os.getpid()})")
    print(f"watch it live:  {sys.executable} -m otpy.observer {node}")
    print(f"or once:        {sys.executable} -m otpy.observer {node} --once")
    print("stop with Ctrl-C" if args.duration is None else f"stopping in {args.duration:g}s",
          flush=True)

    deadline = None if args.duration is None else time.monotonic() + args.duration
    rounds = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = 2.0 if deadline is None else max(0.0, min(2.0, deadline - time.monotonic()))
            time.sleep(wait)
            rounds += 1
            otpy.call("shard-0", ("put", "round", rounds))
            jobs = [c.pid for c in otpy.DynamicSupervisor.which_children("jobs")]
            ticks = sum(otpy.call(pid, "ticks") for pid in jobs)
            print(f"round {rounds}: {len(otpy.processes())} processes, job ticks {ticks}, "
                  f"shard-0 holds round={otpy.call('shard-0', ('get', 'round'))}", flush=True)
            notebook = Pool("notebook")
            facts = notebook.execute("remember", f"fact {rounds}", session="alice")
            print(f"notebook: alice remembers {facts} facts on {notebook.worker_of('alice')}",
                  flush=True)
            if rounds % 2 == 0:
                victim = notebook.worker_of("alice")
                print(f"chaos: SIGKILL alice's worker {victim}", flush=True)
                ref = otpy.monitor(victim)
                os.kill(victim.os_pid, signal.SIGKILL)
                otpy.receive(timeout=10,
                             match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
                recalled = notebook.execute("recall", session="alice")
                print(f"notebook: alice still remembers {len(recalled)} facts, replayed on "
                      f"{notebook.worker_of('alice')} (recovered sessions: "
                      f"{notebook.status().sessions_recovered})", flush=True)
            if rounds % 3 == 0:
                victim = otpy.whereis(f"shard-{random.randrange(2)}")
                print(f"chaos: SIGKILL {victim} (cache restarts both shards)", flush=True)
                ref = otpy.monitor(victim)
                os.kill(victim.os_pid, signal.SIGKILL)
                otpy.receive(timeout=10,
                             match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
                otpy.Supervisor.which_children("cache")  # answered once it has restarted
    except KeyboardInterrupt:
        print("\nCtrl-C", flush=True)
    otpy.Supervisor.stop("app", "shutdown")
    left = [pid for pid in otpy.processes() if pid != otpy.self()]  # the program's own aside
    print(f"stopped cleanly; processes left: {left}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
