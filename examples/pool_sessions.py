"""A session pool whose sessions survive a SIGKILL of their worker.

Two worker processes hold per-session state (a notebook of facts). A
session's ``remember`` commands are marked ``replay=True``: when its worker
is killed, the session's next command goes to another worker, which first
runs those commands again, so the session finds its state as it left it.

Run: python examples/pool_sessions.py
"""

from __future__ import annotations

import os
import signal

import otpy
from otpy_pool import Pool, Worker, command


class Notebook(Worker):
    @command(replay=True)  # builds session state: replayed on a new worker
    def remember(self, session, fact):
        session.state.setdefault("facts", []).append(fact)
        return len(session.state["facts"])

    @command
    def recall(self, session):  # reads state only: not replayed
        return list(session.state.get("facts", []))

    @command
    def where(self, session):
        return os.getpid()


def main() -> None:
    pool = Pool.start_link(Notebook, size=2, name="notebook")
    for fact in ("otp is 25 years old", "links are symmetric"):
        pool.execute("remember", fact, session="alice")
    pool.execute("remember", "monitors are not", session="bob")
    worker = pool.execute("where", session="alice")
    print(f"alice's worker is os pid {worker}; alice remembers "
          f"{pool.execute('recall', session='alice')}")

    # SIGKILL alice's worker and wait until it is gone (its Down).
    pid = pool.worker_of("alice")
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
    print(f"SIGKILLed os pid {pid.os_pid}")

    # Her next command is bound to a live worker, which replays her facts first.
    facts = pool.execute("recall", session="alice")
    print(f"alice now on os pid {pool.execute('where', session='alice')}, remembers {facts}")
    assert facts == ["otp is 25 years old", "links are symmetric"]
    print(f"bob remembers {pool.execute('recall', session='bob')}")
    pool.stop()
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}")


if __name__ == "__main__":
    main()
