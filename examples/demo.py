"""otpy in two screens: processes, links and monitors under a SIGKILL, then a
supervised GenServer that comes back after one.

Run: python examples/demo.py
"""

from __future__ import annotations

import os
import signal
import traceback

import otpy


def worker(name: str, parent: otpy.Pid) -> None:
    """Register a name, say so, then answer pings until told to stop."""
    otpy.register(name)
    otpy.send(parent, ("ready", name))
    while True:
        message = otpy.receive()
        if message == "stop":
            return
        sender, payload = message
        otpy.send(sender, (name, "pong", payload))


def supervisor_like(watch: otpy.Pid, report_to: otpy.Pid) -> None:
    """Trap exits, link to the worker, and report what arrives."""
    otpy.trap_exit(True)
    otpy.link(watch)
    otpy.send(report_to, "linked")
    otpy.send(report_to, ("linked process saw", otpy.receive(timeout=10)))


class Counter(otpy.GenServer):
    """A GenServer: state lives in the server process, between calls."""

    def init(self, start: int = 0) -> None:
        self.count = start

    def handle_call(self, request, caller):
        if request == "get":
            return self.count
        return None

    def handle_cast(self, request) -> None:
        self.count += request


def supervised() -> None:
    print("\n-- a supervision tree --")
    sup = otpy.Supervisor.start_link([Counter.child_spec(100, name="counter")], name="app")
    otpy.cast("counter", 5)
    first = otpy.whereis("counter")
    print(f"supervisor {sup} started 'counter' {first}: count = {otpy.call('counter', 'get')}")
    ref = otpy.monitor(first)
    print(f"SIGKILL -> the counter (os pid {first.os_pid})")
    os.kill(first.os_pid, signal.SIGKILL)
    print(f"  {otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)}")
    # The supervisor heard of the death before our Down arrived, so this call
    # is answered after the restart.
    children = otpy.Supervisor.which_children(sup)
    replacement = otpy.whereis("counter")
    print(f"  restarted as {replacement} (was {first}): {children}")
    print(f"  count = {otpy.call('counter', 'get')} (fresh state from its child spec)")
    otpy.Supervisor.stop(sup)
    print(f"  stopped the tree; processes left: {otpy.processes()}")


def main() -> None:
    me = otpy.self()
    print(f"program process: {me} on node {me.node}")
    print("  (it traps exits, so a crashed child never kills it)")

    a = otpy.spawn(worker, "alpha", me)
    otpy.receive(timeout=10, match=lambda m: m == ("ready", "alpha"))
    crasher = otpy.spawn_link(lambda: 1 / 0)
    print(f"spawned worker {a} and a linked child {crasher} that divides by zero")
    exit_message = otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Exit))
    print(f"  program saw: Exit(pid={exit_message.pid}, reason={exit_message.reason!r})")
    last_line = traceback.format_exception(exit_message.reason)[-2].strip().splitlines()[0]
    print(f"  its remote traceback ends at: {last_line}")

    otpy.send("alpha", (me, "hello"))
    print(f"  ping by name 'alpha' -> {otpy.receive(timeout=10)}")

    watcher = otpy.spawn(supervisor_like, a, me)
    otpy.receive(timeout=10, match=lambda m: m == "linked")
    ref = otpy.monitor(a)
    print(f"monitoring {a} (ref {ref}); {watcher} is linked to it and traps exits")
    print(f"SIGKILL -> os pid {a.os_pid}")
    os.kill(a.os_pid, signal.SIGKILL)

    down = otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down))
    print(f"  monitor saw: {down}")
    print(f"  {otpy.receive(timeout=10, match=lambda m: isinstance(m, tuple))}")
    print(f"  name 'alpha' is free again: whereis -> {otpy.whereis('alpha')}")

    b = otpy.spawn(worker, "alpha", me)
    otpy.receive(timeout=10, match=lambda m: m == ("ready", "alpha"))
    otpy.send("alpha", (me, "again"))
    print(f"  a new worker {b} took the name: {otpy.receive(timeout=10)}")
    otpy.send(b, "stop")
    supervised()
    print("done: on exit every process of this program is gone, even after a SIGKILL of it")


if __name__ == "__main__":
    main()
