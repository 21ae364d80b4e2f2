"""Process bodies and helpers shared by the tests (importable by reference)."""

from __future__ import annotations

import os
import pathlib
import select
import signal
import threading
import time
from typing import Any, Iterable

import otpy

TESTS = pathlib.Path(__file__).resolve().parent  # tests/: helpers, servers, pool_workers
ROOT = TESTS.parent  # the repository
DEADLINE = 10.0  # generous: a deadline, never a sleep
CURRENT_TREE = None  # the isolated tree the running test is in (set by conftest)


def ctrl_c_restored() -> None:
    """A ``preexec_fn`` for a program a test will Ctrl-C: SIGINT as a terminal
    would find it. A shell's background job (a CI step, ``cmd &``) starts with
    SIGINT ignored, and a child inherits that: Ctrl-C would then do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def others() -> list[otpy.Pid]:
    """Live processes besides the program's own and the test's tree root."""
    ignore = {otpy.self()}
    if CURRENT_TREE is not None:
        ignore.add(CURRENT_TREE.supervisor)
    return [p for p in otpy.processes() if p not in ignore]


def kill_and_wait(pids: Iterable[otpy.Pid]) -> None:
    """SIGKILL the processes and wait for each one's Down."""
    refs = {}
    for pid in pids:
        refs[otpy.monitor(pid)] = pid
        try:
            os.kill(pid.os_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for ref in refs:
        otpy.receive(timeout=DEADLINE,
                     match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)


def expect(match, timeout: float = DEADLINE) -> Any:
    return otpy.receive(timeout=timeout, match=match)


def expect_down(ref: otpy.Ref, timeout: float = DEADLINE) -> otpy.Down:
    return expect(lambda m: isinstance(m, otpy.Down) and m.ref == ref, timeout)


def expect_exit(pid: otpy.Pid, timeout: float = DEADLINE) -> otpy.Exit:
    return expect(lambda m: isinstance(m, otpy.Exit) and m.pid == pid, timeout)


def wait_gone(os_pids: Iterable[int], timeout: float = DEADLINE) -> list[int]:
    """Wait (on pidfds, no polling) until the OS processes exit; return survivors."""
    fds = {}
    for os_pid in os_pids:
        try:
            fds[os.pidfd_open(os_pid)] = os_pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        pending = set(fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(pending), [], [], remaining)
            pending -= set(ready)
        return sorted(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)


def spare_os_pid(timeout: float = DEADLINE) -> int:
    """The OS pid of the zygote's spare (the process the next spawn is handed
    to: the zygote's one child that is no otpy process), once it is forked."""
    # imported here: programs the tests run import this module, and some
    # check which modules they and their processes load
    import psutil

    from otpy import lowlevel
    from otpy.testing import wait_for

    zygote = psutil.Process(lowlevel.zygote_os_pid())

    def spare() -> int | None:
        known = {p.os_pid for p in otpy.processes()}
        found = []
        for child in zygote.children():
            try:
                if child.pid not in known and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return found[0] if len(found) == 1 else None

    return wait_for(spare, timeout=timeout)


# ---- process bodies ---------------------------------------------------------

def idle() -> None:
    otpy.receive()


def echo() -> None:
    """Reply ("echo", x) to (sender, x) until told "stop"."""
    while True:
        message = otpy.receive()
        if message == "stop":
            return
        sender, payload = message
        otpy.send(sender, ("echo", payload))


def forward_to(target: otpy.Pid) -> None:
    """Send everything received on to ``target`` until "stop"."""
    while True:
        message = otpy.receive()
        if message == "stop":
            return
        otpy.send(target, message)


def report_to(parent: otpy.Pid, *, trap: bool = False) -> None:
    """Tell the parent we are up, then forward every message to it."""
    if trap:
        otpy.trap_exit(True)
    otpy.send(parent, ("up", otpy.self()))
    forward_to(parent)


def send_loaded_modules(parent: otpy.Pid) -> None:
    """Send ``parent`` the names of the modules this process holds: what it
    inherited from the zygote, since a body by reference imports nothing new."""
    import sys

    otpy.send(parent, sorted(sys.modules))


def report_descriptors(parent: otpy.Pid, padding: bytes = b"", other: Any = None,
                       close_stdout: bool = False) -> None:
    """Tell ``parent`` whether a write to fd 1 succeeds, and how many sockets a
    program this process execs inherits (``padding``: a body's extra size),
    after a first message to ``other`` (its stream comes from the zygote;
    ``close_stdout``: with fd 1 closed first, free for it to land on)."""
    import subprocess

    if close_stdout:
        os.close(1)
    if other is not None:
        otpy.send(other, "hello")
    try:
        os.write(1, b"not a frame")
        wrote = True
    except OSError:
        wrote = False
    listing = subprocess.run(["sh", "-c", "ls -l /proc/$$/fd"], close_fds=False,
                             capture_output=True, text=True, check=True).stdout
    otpy.send(parent, ("fds", wrote, listing.count("socket:")))


def exit_with(reason: Any) -> None:
    raise otpy.ProcessExit(reason)


def busy() -> None:
    while True:
        pass


def crash(message: str = "boom") -> None:
    raise ValueError(message)


class Tracked:
    """Tells ``owner`` when it is freed, and in which process: for tests
    that a process lets go of what it handled."""

    def __init__(self, owner: otpy.Pid, tag: str) -> None:
        self.owner = owner
        self.tag = tag

    def __del__(self) -> None:
        otpy.send(self.owner, ("freed", self.tag, otpy.self()))


def sigkill(pid: otpy.Pid) -> None:
    """SIGKILL an otpy process and wait for its Down."""
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)


def in_thread(fn, *args, **kwargs):
    """Run fn in a thread; returns a function that joins it and returns (or raises) its result."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def join():
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the thread did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]
    return join
