"""Shared memory set up in several steps leaves no descriptor open when a later
step fails (out of memory, say): each test makes that step fail, for real
values otherwise, and counts this process's open descriptors."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import textwrap
import types

import pytest

from otpy._runtime import observe, status
from otpy_pool import _counters, _limiter_shared, _shared_memory


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _out_of_memory(*args, **kwargs):
    raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))


def _failing_mmap() -> types.SimpleNamespace:
    """A stand-in for a module's ``mmap`` whose mappings fail."""
    return types.SimpleNamespace(mmap=_out_of_memory, MAP_SHARED=mmap.MAP_SHARED,
                                 PROT_READ=mmap.PROT_READ, PROT_WRITE=mmap.PROT_WRITE)


def _closes_on_failure(make) -> None:
    before = _open_fds()
    with pytest.raises(OSError) as info:
        make()
    assert info.value.errno == errno.ENOMEM
    assert _open_fds() == before


def test_status_table(monkeypatch):
    monkeypatch.setattr(status, "mmap", _failing_mmap())
    _closes_on_failure(status.StatusTable.create)


def test_observation_page(monkeypatch):
    monkeypatch.setattr(observe.os, "pwrite", _out_of_memory)
    _closes_on_failure(observe.Page)


def test_created_shared_page(monkeypatch):
    monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
    _closes_on_failure(lambda: _shared_memory.create("otpy-test-page", 4096))


def test_held_shared_page(monkeypatch):
    monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
    _closes_on_failure(lambda: _shared_memory.hold(object(), 4096, "otpy-test-page"))


def test_opened_shared_page(monkeypatch):
    fd = _control_page()
    try:
        monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
        _closes_on_failure(lambda: _shared_memory.Page.open(os.getpid(), fd, 4096, keep=True))
    finally:
        os.close(fd)


def test_worker_counts(monkeypatch):
    monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
    _closes_on_failure(_counters.WorkerCounts)


def _control_page() -> int:
    fd = os.memfd_create("otpy-test-control", os.MFD_CLOEXEC)
    os.ftruncate(fd, _limiter_shared.CONTROL_BYTES)
    return fd


def test_limiter_control(monkeypatch):
    fd = _control_page()
    try:
        monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
        _closes_on_failure(lambda: _limiter_shared.Control(os.getpid(), fd))
    finally:
        os.close(fd)


def test_limiter_table_rebuild(monkeypatch):
    fd = _control_page()
    control = _limiter_shared.Control(os.getpid(), fd)
    try:
        owner = _limiter_shared.TableOwner(control, "fixed_window")
        monkeypatch.setattr(_shared_memory, "mmap", _failing_mmap())
        _closes_on_failure(lambda: owner.rebuild(0))
    finally:
        control.close()
        os.close(fd)


def test_node_start_when_the_zygote_cannot_be_forked():
    # In a fresh program: the node starts at its first otpy call.
    program = textwrap.dedent("""
        import errno, os, otpy
        from otpy._runtime import node

        def fds():
            return len(os.listdir("/proc/self/fd"))

        def refuse():
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

        real_fork, node.os.fork = node.os.fork, refuse
        before = fds()
        try:
            otpy.self()
        except otpy.OtpyError as exc:
            print("error:", exc)
        print("left open:", fds() - before)
        node.os.fork = real_fork
        print("then:", otpy.self().os_pid == os.getpid())
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "error: cannot start the otpy node: the system refused to create a process" \
        in out.stdout
    assert "RLIMIT_NPROC" in out.stdout  # it names the limits to look at
    assert "left open: 0" in out.stdout
    assert "then: True" in out.stdout  # nothing half-done: a later call starts the node


def test_node_start_failing_after_the_fork():
    program = textwrap.dedent("""
        import os, otpy, psutil
        from otpy._runtime import node, process

        def fds():
            return len(os.listdir("/proc/self/fd"))

        class Unmakeable:
            def __init__(self, *args, **kwargs):
                raise MemoryError("no memory for the program's process context")

        real, process.ProcessContext = process.ProcessContext, Unmakeable
        before = fds()
        try:
            otpy.self()
        except MemoryError as exc:
            print("error:", exc)
        print("left open:", fds() - before)
        print("zygotes left:", len(psutil.Process().children()))
        process.ProcessContext = real
        print("then:", otpy.self().os_pid == os.getpid())
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "error: no memory for the program's process context" in out.stdout
    assert "left open: 0" in out.stdout
    assert "zygotes left: 0" in out.stdout  # the zygote it had forked is killed and reaped
    assert "then: True" in out.stdout


def test_a_spawn_that_cannot_copy_the_spawners_stream_closes_what_it_made():
    from otpy._runtime import wire
    from otpy._runtime.zygote import Zygote

    zygote = types.SimpleNamespace(procs={})
    zygote._streams = lambda: Zygote._streams(zygote)
    # the spawner's stream as a number no descriptor has: its copy fails
    spawner = types.SimpleNamespace(write=types.SimpleNamespace(fileno=lambda: -1))
    before = _open_fds()
    result = Zygote._fork_child(zygote, 7, "", None, spawner, wire.MSG, b"")
    assert result[0] == "error" and "Bad file descriptor" in result[1], result
    assert _open_fds() == before  # the socket pairs and the pidfd's slot are closed
