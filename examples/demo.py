"""The otpy runtime in one screen: processes, links, monitors, a SIGKILL.

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
    print("done: on exit every process of this program is gone, even after a SIGKILL of it")


if __name__ == "__main__":
    main()
