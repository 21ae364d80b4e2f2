"""Worker classes for the pool tests (importable by reference in workers)."""

from __future__ import annotations

import asyncio
import os
import pathlib

import otpy
from otpy_pool import PoolEvent, Worker, command

from helpers import DEADLINE, expect


def event(kind: str, timeout: float = DEADLINE) -> PoolEvent:
    """The next PoolEvent of ``kind`` (the test subscribed), within a deadline."""
    return expect(lambda m: isinstance(m, PoolEvent) and m.kind == kind, timeout)


class Notes(Worker):
    """Sessions of notes: ``add`` builds state (replayed), the rest read it."""

    def init(self, tag="notes", fail_if=None, report_to=None):
        if fail_if is not None and os.path.exists(fail_if):
            raise RuntimeError(f"init refused: {fail_if} exists")
        self.tag = tag
        self.report_to = report_to
        self.unhealthy_if = None

    @command(replay=True)
    def add(self, session, note):
        session.state.setdefault("notes", []).append(note)
        return len(session.state["notes"])

    @command(replay=True)
    def load(self, session, path):
        """Reads a file: replaying it fails once the file is gone."""
        session.state["loaded"] = pathlib.Path(path).read_text()
        return session.state["loaded"]

    @command
    def notes(self, session):
        return list(session.state.get("notes", []))

    @command
    def state(self, session):
        return dict(session.state)

    @command
    def ping(self, session):
        return ("pong", self.tag, session.id)

    @command
    def whoami(self, session):
        return otpy.self()

    @command
    def echo(self, session, *args, **kwargs):
        return (args, kwargs)

    @command
    def fail(self, session, text):
        raise KeyError(text)

    @command
    def unpicklable_result(self, session):
        return lambda_holder()

    @command
    def hold(self, session, report_to, tag):
        """Tells ``report_to`` it runs, then waits for ("release", tag)."""
        otpy.send(report_to, ("holding", tag, otpy.self()))
        otpy.receive(match=lambda m: m == ("release", tag))
        return tag

    @command
    def hold_then_die_answering(self, session, report_to, tag):
        """``hold``, then a result whose pickling SIGKILLs the worker: it dies
        after it checked itself in, before its answer is sent."""
        self.hold(session, report_to, tag)
        return KillsWhenSent()

    @command
    def ran(self, session, report_to, tag):
        otpy.send(report_to, ("ran", tag))
        return tag

    @command
    def record(self, session, path, tag):
        """Not idempotent: each run appends ``tag`` to the file ``path``."""
        with open(path, "a") as f:
            f.write(f"{tag}\n")
        return tag

    @command
    def die(self, session):
        os._exit(3)

    @command
    def grow(self, session, nbytes):
        self.ballast = bytearray(nbytes)
        return len(self.ballast)

    @command(replay=True)
    def add_or_exit(self, session, note):
        """``add``; the note "exit" ends the worker's process instead (a crash)."""
        if note == "exit":
            os._exit(3)
        return self.add(session, note)

    @command
    def nap(self, session, seconds):
        """A command that takes ``seconds`` (the workload of a deadline test)."""
        import time

        time.sleep(seconds)
        return seconds

    @command
    def set_unhealthy_if(self, session, path):
        self.unhealthy_if = path
        return path

    @command
    def set_hung_health_if(self, session, path):
        self.hung_health_if = path
        return path

    def health_check(self):
        if self.report_to is not None:
            otpy.send(self.report_to, ("health_checked", otpy.self()))
        if getattr(self, "hung_health_if", None) and os.path.exists(self.hung_health_if):
            otpy.receive(match=lambda m: m == "never sent")  # a check that never answers
        return not (self.unhealthy_if and os.path.exists(self.unhealthy_if))

    def terminate(self, reason):
        if self.report_to is not None:
            otpy.send(self.report_to, ("terminated", otpy.self(), reason))

    @command
    def undecodable(self, session, kind):
        """A result the caller cannot decode (raised, for the *_raised kinds)."""
        value = make_undecodable(kind.removesuffix("_raised"))
        if kind.endswith("_raised"):
            raise value
        return value

    def not_a_command(self, session):
        return "must not run"


def _sigkill_self():
    os.kill(os.getpid(), 9)


class KillsWhenSent:
    """A value whose pickling SIGKILLs the process sending it."""

    def __reduce__(self):
        _sigkill_self()


def lambda_holder():
    return (n for n in range(3))  # a generator: cannot be pickled, even by dill


class SlowInit(Notes):
    """An init that never finishes, with a short init_timeout."""

    init_timeout = 0.3

    def init(self, *args, **kwargs):
        otpy.receive(match=lambda m: m == "never sent")


class StuckTerminate(Notes):
    """A terminate that never returns, with a short shutdown_timeout."""

    shutdown_timeout = 0.3

    def terminate(self, reason):
        super().terminate(reason)
        otpy.receive(match=lambda m: m == "never sent")


# ---- results a caller cannot decode (issue 21, item 1) ------------------------------------------

class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: __init__ takes two arguments and
    passes one to Exception.__init__, so unpickling calls it with one."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def _explode(kind):
    raise SystemExit(3) if kind == "exit" else ValueError("exploded while unpickled")


class ExplodesOnLoad(Exception):
    """Its __reduce__ works where it is pickled; rebuilding it raises."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind

    def __reduce__(self):
        return (_explode, (self.kind,))


def make_undecodable(kind):
    """"two_arg", "ghost" (a class of a module only this process has),
    "reduce_raises" or "reduce_exits"."""
    if kind == "two_arg":
        return TwoArgError(7, "two arguments")
    if kind == "ghost":
        import sys
        import types

        module = sys.modules.setdefault("otpy_ghost_module", types.ModuleType("otpy_ghost_module"))
        ghost = type("Ghost", (Exception,), {"__module__": "otpy_ghost_module"})
        module.Ghost = ghost
        return ghost("boo")
    return ExplodesOnLoad("exit" if kind == "reduce_exits" else "value")


# ---- async workers (issue 26, workers) ------------------------------------------------------------

class AsyncNotes(Worker):
    """``async def`` commands, up to 4 at once; ``init``, ``health_check`` and
    ``terminate`` are async too and report to ``report_to``."""

    max_concurrency = 4

    async def init(self, report_to=None):
        await asyncio.sleep(0)
        self.report_to = report_to
        self.tell("init", otpy.self())

    def tell(self, *message):
        if self.report_to is not None:
            otpy.send(self.report_to, message)

    async def health_check(self):
        await asyncio.sleep(0)
        self.tell("health_checked", otpy.self())
        return True

    async def terminate(self, reason):
        await asyncio.sleep(0)
        self.tell("terminated", reason)

    @command(replay=True)
    async def add(self, session, note):
        await asyncio.sleep(0)
        session.state.setdefault("notes", []).append(note)
        self.tell("added", session.id, note)
        return len(session.state["notes"])

    @command
    async def notes(self, session):
        return list(session.state.get("notes", []))

    @command(replay=True)
    async def load(self, session, path):
        """Reads a file: replaying it fails once the file is gone."""
        await asyncio.sleep(0)
        session.state["loaded"] = pathlib.Path(path).read_text()
        return session.state["loaded"]

    @command
    async def whoami(self, session):
        return otpy.self()

    @command
    async def gate(self, session, report_to, tag):
        """Tells ``report_to`` it started, waits for ("go", tag), tells it ended."""
        otpy.send(report_to, ("started", tag, otpy.self()))
        await otpy.areceive(match=lambda m: m == ("go", tag))
        otpy.send(report_to, ("ended", tag))
        return tag

    @command
    async def ran(self, session, report_to, tag):
        otpy.send(report_to, ("ran", tag))
        return tag

    @command
    async def patient(self, session, report_to, tag):
        """Waits forever; tells ``report_to`` when it is cancelled."""
        otpy.send(report_to, ("started", tag, otpy.self()))
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            otpy.send(report_to, ("cancelled", tag))
            raise

    @command
    async def stubborn(self, session, report_to, tag):
        """Ignores its cancellation: waits on."""
        otpy.send(report_to, ("started", tag, otpy.self()))
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                otpy.send(report_to, ("ignored", tag))

    @command
    async def fail(self, session, text):
        raise KeyError(text)

    @command
    def sync_ping(self, session):
        """A sync command on an async worker: runs in the loop's thread."""
        return ("pong", session.id)


class StubbornGrace(AsyncNotes):
    """A short grace: a command that ignores its cancellation is killed soon."""

    cancel_grace = 0.2
