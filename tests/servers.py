"""GenServers used by the tests (importable by reference)."""

from __future__ import annotations

import os

import otpy


class Counter(otpy.GenServer):
    def init(self, start=0, report_to=None, trap=False):
        self.count = start
        self.report_to = report_to
        self.pending = None
        if trap:
            otpy.trap_exit(True)

    def handle_call(self, request, caller):
        match request:
            case "get":
                return self.count
            case ("add", n):
                self.count += n
                return self.count
            case "later":  # answered by the next "release" cast
                self.pending = caller
                if self.report_to is not None:
                    otpy.send(self.report_to, ("parked", caller.pid))
                return otpy.NOREPLY
            case ("stop", reason):
                return otpy.Stop(reason, reply="stopping")
            case "crash":
                raise ValueError("crashed in handle_call")
            case "self_call":
                return otpy.call(otpy.self(), "get")
            case ("sleep_then_reply", seconds):
                import time

                time.sleep(seconds)
                return "late"
        raise ValueError(f"unexpected {request!r}")

    def handle_cast(self, request):
        match request:
            case ("add", n):
                self.count += n
            case "release":
                otpy.reply(self.pending, ("released", self.count))
            case ("stop", reason):
                return otpy.Stop(reason)
            case "crash":
                raise RuntimeError("crashed in handle_cast")

    def handle_info(self, message):
        if self.report_to is not None:
            otpy.send(self.report_to, ("info", message))

    def terminate(self, reason):
        if self.report_to is not None:
            otpy.send(self.report_to, ("terminate", reason))


class FailingInit(otpy.GenServer):
    def init(self, how="raise"):
        if how == "raise":
            raise KeyError("bad config")
        if how == "ignore":
            return otpy.IGNORE
        if how == "exit":
            raise otpy.ProcessExit(("shutdown", "refused"))


class Recorder(otpy.GenServer):
    """Reports its start and its terminate to ``report_to``; traps exits."""

    def init(self, cid, report_to, fail=False):
        if fail:
            raise RuntimeError(f"{cid} refuses to start")
        otpy.trap_exit(True)
        self.cid = cid
        self.report_to = report_to
        otpy.send(report_to, ("started", cid, otpy.self()))

    def handle_call(self, request, caller):
        return self.cid

    def terminate(self, reason):
        otpy.send(self.report_to, ("terminate_begin", self.cid, reason))
        otpy.send(self.report_to, ("terminate_end", self.cid))


def stubborn(report_to):
    """Traps exits and ignores every one of them."""
    otpy.trap_exit(True)
    otpy.send(report_to, ("stubborn", otpy.self()))
    while True:
        otpy.receive()


def start_stubborn(report_to):
    return otpy.spawn_link(stubborn, report_to)


def unlinker(supervisor, report_to):
    otpy.unlink(supervisor)
    otpy.send(report_to, ("unlinked", otpy.self()))
    otpy.receive()


def start_unlinker(report_to):
    return otpy.spawn_link(unlinker, otpy.self(), report_to)


def returns_garbage():
    return 42


def start_ignored():
    return None


class StartsOnce(otpy.GenServer):
    """Starts while ``flag`` (a path) does not exist and creates it; later
    starts fail until the test removes it: a child whose restart fails."""

    def init(self, flag):
        if os.path.exists(flag):
            raise ValueError(f"{flag} exists: refusing to restart")
        open(flag, "w").close()

    def handle_call(self, request, caller):
        return request
