"""Runtime hardening seen from whole programs (each one a subprocess with its
own node): objects defined in ``__main__`` after the node started, the
orderly stop at exit on every route, failed restarts in the logs, and
importing otpy configuring nothing."""

from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import ctrl_c_restored

DEADLINE = 60.0


@pytest.fixture
def tmp_path(otpy_tree):
    """The tree's own temporary directory (removed with the tree)."""
    return pathlib.Path(otpy_tree.tmp_path)


def program(tmp_path, source: str) -> str:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_")}
    return {**base, **extra}


def run(path: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                          timeout=DEADLINE, env=env(**extra))


def read_line(proc: subprocess.Popen, timeout: float = DEADLINE) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the program did not get ready"
    return proc.stdout.readline()


def assert_gone(os_pids: list[int]) -> None:
    """Each process is gone, or goes within the deadline."""
    for os_pid in os_pids:
        try:
            fd = os.pidfd_open(os_pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], 2.0)[0], f"os pid {os_pid} is still alive"
        finally:
            os.close(fd)


# ---- 1. the guide's examples, with everything defined after the node started -----

GUIDE = """
    import abc
    import otpy

    class Counter(otpy.GenServer):
        def init(self, start=0):
            self.count = start

        def handle_call(self, request, caller):
            match request:
                case "get":
                    return self.count
                case ("add", n):
                    self.count += n
                    return self.count

        def handle_cast(self, request):
            self.count += request

    pid = Counter.start_link(0, name="counter")   # the node starts here
    otpy.cast("counter", 5)
    assert otpy.call("counter", ("add", 1)) == 6
    otpy.stop("counter")

    # Everything below is defined after the node (and its zygote) started.
    def work():
        otpy.receive()

    class Session(otpy.GenServer):
        def init(self, user_id):
            self.user_id = user_id

        def handle_call(self, request, caller):
            return (request, Point(self.user_id, 2))

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def double(n):
        return 2 * n

    class Shape(abc.ABC):  # a metaclass other than type
        @abc.abstractmethod
        def area(self): ...

    class Square(Shape):
        def __init__(self, n):
            self.n = n

        def area(self):
            return self.n * self.n

    sup = otpy.Supervisor.start_link(
        [Counter.child_spec(0, name="counter"),
         otpy.ChildSpec("worker", otpy.spawn_link, args=(work,), restart="transient",
                        shutdown=2.0)],
        strategy="one_for_one", max_restarts=3, max_seconds=5.0, name="app")
    otpy.Supervisor.start_child("app", otpy.ChildSpec("late", otpy.spawn_link, args=(work,)))
    otpy.Supervisor.start_child("app", Session.child_spec(7, id="s7"))
    children = otpy.Supervisor.which_children(sup)
    assert [c.id for c in children] == ["counter", "worker", "late", "s7"]

    pool = otpy.DynamicSupervisor.start_link(max_children=100, name="sessions")
    session = otpy.DynamicSupervisor.start_child("sessions", Session.child_spec(42))
    request, point = otpy.call(session, ("where", Point(1, 1), double, Square(3)))
    assert request[0] == "where" and request[1].x == 1 and request[2](4) == 8
    assert request[3].area() == 9
    assert (point.x, point.y) == (42, 2)
    assert otpy.DynamicSupervisor.count_children("sessions")["active"] == 1
    otpy.DynamicSupervisor.terminate_child("sessions", session)
    print("all done", flush=True)
"""


def test_the_guides_examples_with_late_definitions_run_as_one_script(tmp_path):
    out = run(program(tmp_path, GUIDE))
    assert out.returncode == 0, out.stderr
    assert "all done" in out.stdout


# ---- 2. cast to a full receiver: bounded by OTPY_SEND_TIMEOUT ---------------------

FULL = """
    import threading
    import otpy

    def stuck(report_to):
        otpy.send(report_to, "stuck")
        threading.Event().wait()

    pid = otpy.spawn_link(stuck, otpy.self())
    otpy.receive(timeout=10, match=lambda m: m == "stuck")
    chunk = b"x" * 32000
    try:
        for _ in range(10_000):
            otpy.cast(pid, chunk)
    except otpy.Timeout as exc:
        print("cast gave up:", exc, flush=True)
"""


def test_a_cast_to_a_full_receiver_gives_up_after_the_send_timeout(tmp_path):
    out = run(program(tmp_path, FULL), OTPY_SEND_TIMEOUT="0.3")
    assert out.returncode == 0, out.stderr
    assert "cast gave up" in out.stdout and "inbound buffer is full" in out.stdout


# ---- 3. an orderly stop at exit ---------------------------------------------------

STOPPING = """
    import os
    import sys
    import otpy

    OUT, ROUTE = sys.argv[1], sys.argv[2]

    class Worker(otpy.GenServer):
        def init(self, tag):
            otpy.trap_exit(True)
            self.tag = tag

        def terminate(self, reason):
            with open(OUT, "a") as f:
                f.write(f"{self.tag} {reason}\\n")

    first = otpy.Supervisor.start_link([Worker.child_spec("a", id="a"),
                                        Worker.child_spec("b", id="b")], name="first")
    second = otpy.Supervisor.start_link([Worker.child_spec("c", id="c")], name="second")
    loner = Worker.start_link("d")
    pids = [p.os_pid for p in otpy.processes()] + [otpy.lowlevel.zygote_os_pid(),
                                                  otpy.lowlevel.keeper_os_pid()]
    print(" ".join(map(str, pids)), flush=True)
    if ROUTE == "exception":
        raise RuntimeError("uncaught on purpose")
    if ROUTE == "explicit":
        otpy.lowlevel.shutdown(timeout=10)
        print("after", open(OUT).read().split(), flush=True)
    if ROUTE == "signal":
        otpy.receive()  # until the signal arrives
"""

# newest tree first; in each supervisor, children in reverse start order
ORDER = ["d shutdown", "c shutdown", "b shutdown", "a shutdown"]


@pytest.mark.parametrize("route, code", [("normal", 0), ("exception", 1), ("explicit", 0)])
def test_terminate_runs_in_order_when_the_program_ends(tmp_path, route, code):
    out_file = tmp_path / "terminated"
    out = run(program(tmp_path, STOPPING), str(out_file), route)
    assert out.returncode == code, out.stderr
    assert out_file.read_text().splitlines() == ORDER
    assert_gone([int(p) for p in out.stdout.split("\n")[0].split()[1:]])
    if route == "exception":
        assert "uncaught on purpose" in out.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, -signal.SIGINT),
                                          (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_terminate_runs_in_order_on_sigint_and_sigterm(tmp_path, signum, code):
    out_file = tmp_path / "terminated"
    proc = subprocess.Popen([sys.executable, program(tmp_path, STOPPING), str(out_file), "signal"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=ctrl_c_restored)
    try:
        pids = [int(p) for p in read_line(proc).split()]
        proc.send_signal(signum)
        proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == code, stderr
    assert out_file.read_text().splitlines() == ORDER
    assert_gone(pids[1:])


STUBBORN = """
    import threading
    import otpy

    class Stubborn(otpy.GenServer):
        def init(self):
            otpy.trap_exit(True)

        def terminate(self, reason):
            threading.Event().wait()  # never finishes

    otpy.Supervisor.start_link([Stubborn.child_spec(id="s", shutdown="infinity")])
    pids = [p.os_pid for p in otpy.processes()] + [otpy.lowlevel.zygote_os_pid(),
                                                  otpy.lowlevel.keeper_os_pid()]
    print(" ".join(map(str, pids)), flush=True)
"""


def test_the_orderly_stop_is_bounded_by_its_timeout(tmp_path):
    out = run(program(tmp_path, STUBBORN), OTPY_SHUTDOWN_TIMEOUT="0.5")
    assert out.returncode == 0, out.stderr
    assert_gone([int(p) for p in out.stdout.split()[1:]])


# ---- 4. a failed restart is an error with its reason and traceback ------------------

FAILED_RESTART = """
    import os
    import sys
    import otpy

    MARKER = sys.argv[1]

    class Flaky(otpy.GenServer):
        def init(self):
            if os.path.exists(MARKER):
                raise ValueError("no second start")
            open(MARKER, "w").close()

    sup = otpy.Supervisor.start_link([Flaky.child_spec(id="flaky")],
                                     max_restarts=2, max_seconds=60)
    ref = otpy.monitor(sup)
    [child] = otpy.Supervisor.which_children(sup)
    otpy.exit(child.pid, "kill")
    otpy.receive(timeout=30, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
"""


def test_a_restart_whose_init_raises_is_logged_as_an_error_with_its_traceback(tmp_path):
    log_file = tmp_path / "log.jsonl"
    out = run(program(tmp_path, FAILED_RESTART), str(tmp_path / "marker"),
              OTPY_LOG="json", OTPY_LOG_FILE=str(log_file))
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    failed = [e for e in events if e["event"] == "start failed"]
    assert failed and all(e["level"] == "error" for e in failed)
    assert "ValueError" in failed[0]["reason"] and "no second start" in failed[0]["reason"]
    assert "Traceback" in failed[0]["exception"] and "no second start" in failed[0]["exception"]
    [gave_up] = [e for e in events if e["event"] == "restart intensity exceeded"]
    assert gave_up["level"] == "error"
    assert any("no second start" in text for text in gave_up["last_failures"])


# ---- importing otpy configures nothing ------------------------------------------------

IMPORT_ONLY = """
    import os
    import sys
    import otpy

    LOG = sys.argv[1]
    assert not os.path.exists(LOG), "importing otpy opened the log file"
    otpy.self()  # the node starts: now the environment is read
    assert os.path.exists(LOG)
    print("ok", flush=True)
"""


TWO_NODES = """
    import os, otpy

    def ask_the_zygote(tag):
        me = otpy.self()
        for i in range(2000):
            otpy.register(f"{tag}{i}", me)
            assert me in otpy.processes(), (tag, i)
            otpy.unregister(f"{tag}{i}")

    otpy.self()  # this program's node
    child = os.fork()
    if child == 0:  # a fork that starts a node of its own: a second zygote
        code = 1
        try:
            ask_the_zygote("child")
            code = 0
        finally:
            os._exit(code)
    ask_the_zygote("parent")
    print("child exited with", os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
"""


def test_a_fork_with_a_node_of_its_own_shares_no_buffer_with_this_one(tmp_path):
    # The zygotes' receive buffer was once an anonymous mmap, which a fork
    # shares: two zygotes read their requests into the same pages.
    out = run(program(tmp_path, TWO_NODES))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child exited with 0" in out.stdout, out.stderr[-3000:]


def test_importing_otpy_configures_nothing_until_the_node_starts(tmp_path):
    log_file = tmp_path / "log.jsonl"
    out = run(program(tmp_path, IMPORT_ONLY), str(log_file),
              OTPY_LOG="json", OTPY_LOG_FILE=str(log_file))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


STDIO_CLOSED = """
    import os, subprocess, sys
    os.close(0)  # as a program started with `<&- >&-` (a daemon's way)
    os.close(1)
    import otpy
    from otpy import lowlevel

    def scribble(parent):
        os.write(1, b"meant for stdout" * 5000)  # what once overwrote the status table
        otpy.send(parent, ("stdio", os.readlink("/proc/self/fd/0"),
                           os.readlink("/proc/self/fd/1")))

    me = otpy.self()
    otpy.spawn(scribble, me)
    _, fd0, fd1 = otpy.receive(timeout=10, match=lambda m: type(m) is tuple)
    print("process", fd0, fd1, file=sys.stderr)
    for who, os_pid in (("program", "self"), ("zygote", lowlevel.zygote_os_pid())):
        print(who, *(os.readlink(f"/proc/{os_pid}/fd/{fd}") for fd in (0, 1)), file=sys.stderr)
    execd = subprocess.run(["sh", "-c", "[ -e /proc/self/fd/0 ] && echo open || echo closed"],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    print("a program it execs finds fd 0", execd, file=sys.stderr)
    pids = [otpy.spawn(otpy.receive) for _ in range(3)]
    otpy.register("third", pids[2])
    print("serials", *(p.serial for p in pids), otpy.whereis("third") == pids[2],
          all(otpy.process_info(p)["os_pid"] == p.os_pid for p in pids), file=sys.stderr)
"""


def test_a_program_started_without_stdin_and_stdout_keeps_them_out_of_the_node(tmp_path):
    # With fds 0 and 1 closed, the node's status table (a memfd every process
    # maps) took them: a process's write to stdout overwrote it, and the next
    # processes got serials in the thousands.
    out = run(program(tmp_path, STDIO_CLOSED))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    for who in ("process", "program", "zygote"):
        assert f"{who} /dev/null /dev/null" in lines, out.stderr
    assert "serials 3 4 5 True True" in lines, out.stderr
    assert "a program it execs finds fd 0 closed" in lines, out.stderr  # as before
