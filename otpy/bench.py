"""``python -m otpy.bench``: otpy's figures, each beside its reference, in one run.

These machines are noisy, so a latency is only meaningful next to a reference
measured in the same run: the report gives ratios as well as raw figures, and
``--compare`` checks the ratios against a saved baseline.

    python -m otpy.bench                 # full run, readable table
    python -m otpy.bench --quick         # seconds; same keys, fewer samples
    python -m otpy.bench --json out.json # also write the results as JSON
    python -m otpy.bench --compare base.json [--margin 0.25]
    python -m otpy.bench --verbose       # with the node's logs (restarts, crash reports)

Gates (GATES) are figures that must hold in every run, whatever the machine's
noise: the exit status is 1 when one fails.

The observed-call case needs the observer extra (``pip install -e '.[observer]'``);
without it, it is reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, Callable, Iterator

import otpy

_ns = time.perf_counter_ns

# Ratios are "lower is better"; each names the two keys it divides.
RATIOS = {
    "send_receive_over_pipe_p50": ("send_receive_rtt_us", "pipe_pickle_rtt_us"),
    "call_over_pipe_p50": ("call_rtt_us", "pipe_pickle_rtt_us"),
    "call_observed_over_call_p50": ("call_rtt_observed_us", "call_rtt_us"),
    "spawn_at_1000_over_at_10_p50": ("spawn_ms_at_1000", "spawn_ms_at_10"),
    # issue 10's goal: many threads calling one server at least match one thread
    "calls_1_thread_over_16_threads": ("calls_per_s_1_thread", "calls_per_s_16_threads"),
    "call_p99_over_p50": ("call_rtt_us:p99", "call_rtt_us:p50"),
    # its reference: the same tail of the Pipe round trip, taken in the same run
    "pipe_p99_over_p50": ("pipe_pickle_rtt_us:p99", "pipe_pickle_rtt_us:p50"),
    # what a process costs, beside the same thing for a bare Python
    "import_otpy_over_python_startup": ("import_otpy_ms", "python_startup_ms"),
    "spawn_over_bare_fork_p50": ("spawn_ms", "bare_fork_ms"),
    "shared_over_bare_fork": ("shared_kib_per_process", "shared_kib_per_bare_fork"),
    "written_over_bare_fork": ("written_kib_per_process", "written_kib_per_bare_fork"),
    # the SIGKILLed program's teardown beside the kernel's floor (1,000 in --quick)
    **{f"all_gone_after_kill_over_bare_forks_at_{n}": (f"all_gone_ms_after_kill_at_{n}",
                                                       f"all_gone_ms_after_kill_bare_forks_at_{n}")
       for n in (1000, 5000)},
}
# Reported, not checked by --compare: they swing by half from one run to the next.
UNCOMPARED = {name for name in RATIOS if name.startswith("all_gone_after_kill_over_bare_forks")
              or name.endswith("_p99_over_p50")}
# Must hold in every run (the most each may be): no process of a SIGKILLed
# program can run a line of code 1 s later, at any size.
GATES = {"orphans_after_root_kill": 0,
         **{f"unsignalled_after_kill_at_{n}": 0 for n in (1000, 5000)}}
OBSERVER_INTERVAL = 0.1  # the live view's refresh while observed: 10x its default rate


def summarize(samples_ns: list[int], unit: float) -> dict[str, float]:
    """p50/p99 of samples in nanoseconds, expressed in ``unit`` nanoseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50": round(statistics.median(ordered) / unit, 3),
        "p99": round(ordered[min(n - 1, int(n * 0.99))] / unit, 3),
        "n": n,
    }


# ---- cases -----------------------------------------------------------------------

def _pipe_echo(conn: Any) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message)


def pipe_pickle_rtt(n: int, warmup: int) -> dict:
    """Reference: a small tuple over multiprocessing.Pipe between two forked processes."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_pipe_echo, args=(there,), daemon=True)
    child.start()
    try:
        samples = []
        for i in range(warmup + n):
            t = _ns()
            here.send(("ping", i))
            here.recv()
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e3)
    finally:
        here.send(None)
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
        here.close()
        there.close()


def _echo() -> None:
    while True:
        message = otpy.receive()
        if message is None:
            return
        otpy.send(message[0], message)


def send_receive_rtt(n: int, warmup: int) -> dict:
    """otpy.send + otpy.receive ping-pong between the program's process and another."""
    me = otpy.self()
    pid = otpy.spawn(_echo)
    try:
        samples = []
        for i in range(warmup + n):
            t = _ns()
            otpy.send(pid, (me, i))
            otpy.receive(timeout=10)
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e3)
    finally:
        _stop(pid)


def spawn_ms(n: int, warmup: int) -> dict:
    """Warm spawn: from calling spawn to the child's first message arriving
    (its body is ``otpy.send(parent, "up")``)."""
    me = otpy.self()
    samples = []
    for _ in range(warmup + n):
        t = _ns()
        pid, ref = otpy.spawn_monitor(otpy.send, me, "up")
        otpy.receive(timeout=10, match=lambda m: m == "up")
        samples.append(_ns() - t)
        otpy.receive(timeout=10, match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
    return summarize(samples[warmup:], 1e6)


def bare_fork_ms(n: int, warmup: int) -> dict:
    """Reference for spawn_ms: ``os.fork`` of this very process (the
    interpreter the zygote was forked from, holding the same modules) to the
    child's first byte arriving through a pipe."""
    r, w = os.pipe()
    samples = []
    try:
        for _ in range(warmup + n):
            t = _ns()
            os_pid = os.fork()
            if os_pid == 0:
                try:
                    os.write(w, b".")
                finally:
                    os._exit(0)
            os.read(r, 1)
            samples.append(_ns() - t)
            os.waitpid(os_pid, 0)
    finally:
        os.close(r)
        os.close(w)
    return summarize(samples[warmup:], 1e6)


_IMPORT_PROGRAM = ("import time; t = time.perf_counter_ns(); import otpy; "
                   "print(time.perf_counter_ns() - t)")


def import_and_startup(n: int) -> dict[str, dict]:
    """``import otpy`` in a fresh interpreter, timed inside it, beside a whole
    ``python -c pass`` (the interpreter's own start), taken in turns (both
    from compiled bytecode: see bytecode_cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_")}
    imports, starts = [], []
    for _ in range(n):
        t = _ns()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        starts.append(_ns() - t)
        out = subprocess.run([sys.executable, "-c", _IMPORT_PROGRAM], env=env, check=True,
                             capture_output=True, text=True)
        imports.append(int(out.stdout))
    return {"import_otpy_ms": summarize(imports, 1e6),
            "python_startup_ms": summarize(starts, 1e6)}


def _memory_kib(os_pid: int) -> tuple[int, int]:
    """KiB of anonymous memory ``os_pid`` shares with others (for a fresh fork:
    with the process it was forked from), and KiB it alone has written."""
    fields = {}
    with open(f"/proc/{os_pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0])
    written = fields["Private_Dirty"]
    return max(0, fields["Anonymous"] - written), written


_IDLE_PROCESSES_PROGRAM = textwrap.dedent("""
    import json, sys, time, otpy

    # Bodies by reference from otpy itself: the program imports nothing else
    pids = [otpy.spawn(otpy.receive) for _ in range(int(sys.argv[1]))]
    while any(otpy.process_info(pid)["status"] != "waiting" for pid in pids):
        time.sleep(0.001)
    print(json.dumps([pid.os_pid for pid in pids]), flush=True)
    sys.stdin.read()
""")


def memory_per_process(n: int) -> dict[str, int]:
    """What a process shares with the zygote and writes of its own as it
    starts, beside the same for a fork of a Python that imports nothing:
    medians of ``n`` idle processes (waiting in a receive) of a program that
    imports only otpy, and of ``n`` bare forks."""
    with _forking_program(_IDLE_PROCESSES_PROGRAM, n) as (_, os_pids):
        otpy_memory = [_memory_kib(os_pid) for os_pid in os_pids]
    with _forking_program(_BARE_FORKS_PROGRAM, n) as (_, os_pids):
        bare = [_memory_kib(os_pid) for os_pid in os_pids]
    return {"shared_kib_per_process": round(statistics.median(s for s, _ in otpy_memory)),
            "written_kib_per_process": round(statistics.median(w for _, w in otpy_memory)),
            "shared_kib_per_bare_fork": round(statistics.median(s for s, _ in bare)),
            "written_kib_per_bare_fork": round(statistics.median(w for _, w in bare))}


def _spin_after_hello(parent: otpy.Pid) -> None:
    otpy.send(parent, "spinning")
    while True:
        pass


def down_ms(n: int, warmup: int) -> dict:
    """SIGKILL of a monitored (busy) process to its Down being received."""
    me = otpy.self()
    samples = []
    for _ in range(warmup + n):
        pid, ref = otpy.spawn_monitor(_spin_after_hello, me)
        try:
            otpy.receive(timeout=10, match=lambda m: m == "spinning")
            t = _ns()
            os.kill(pid.os_pid, signal.SIGKILL)
            otpy.receive(timeout=10, match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
            samples.append(_ns() - t)
        finally:
            _kill(pid)
    return summarize(samples[warmup:], 1e6)


_ROOT_PROGRAM = textwrap.dedent("""
    import json, otpy
    from otpy import lowlevel as node

    def busy():
        while True:
            pass

    def idle():
        otpy.receive()

    for i in range(8):
        otpy.spawn(busy if i < 4 else idle)
    print(json.dumps([p.os_pid for p in otpy.processes() if p != otpy.self()]
                     + [node.zygote_os_pid(), node.keeper_os_pid()]), flush=True)
    import sys
    sys.stdin.read()
""")


def orphans_after_root_kill() -> int:
    """SIGKILL a program holding 8 processes (4 busy); count its processes alive 1 s later."""
    proc = subprocess.Popen([sys.executable, "-c", _ROOT_PROGRAM], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        return _alive_after_kill(proc, json.loads(proc.stdout.readline()))[0]
    finally:
        proc.stdin.close()
        proc.stdout.close()


def _alive_after_kill(proc: subprocess.Popen, os_pids: list[int],
                      group: bool = False, cleaner: int | None = None
                      ) -> tuple[int, int, float | None]:
    """SIGKILL ``proc`` (``group``: its whole process group at once): how many of
    ``os_pids`` are alive (not zombies) 1 s later; how many of those neither have
    a SIGKILL pending nor are exiting (could still run a line of code); and how
    many ms until the last was gone (None: not within 10 s). ``cleaner`` (the
    node's keeper) runs no code of the program's after the kill, only otpy's
    cleanup (it kills and reaps the rest, then exits): it is counted alive,
    and gone, but never as able to run the program's code."""
    import select

    # Thousands of processes exiting at once can keep this one off the CPU for
    # seconds: a real-time priority (root only) makes "1 s later" 1 s later.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        realtime = True
    except (PermissionError, OSError):
        realtime = False
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    killed = time.monotonic()
    proc.wait()
    # epoll, not select() (thousands of pidfds pass fd number 1,024) nor poll()
    # (each call would scan them all, and this wait must not take the CPU the
    # dying processes need)
    ep = select.epoll()
    fds: dict[int, int] = {}  # pidfd -> os pid
    alive_at_1s = None
    unsignalled = 0
    last_gone = killed
    try:
        for os_pid in os_pids:
            try:
                fd = os.pidfd_open(os_pid)
            except ProcessLookupError:
                continue  # gone already
            fds[fd] = os_pid
            ep.register(fd, select.EPOLLIN)
        pending = set(fds)

        def gone(timeout: float) -> bool:
            """Take the deaths epoll reports within ``timeout``; whether there were any."""
            nonlocal last_gone
            events = ep.poll(timeout, maxevents=1024)
            for fd, _ in events:
                ep.unregister(fd)
                pending.discard(fd)
            if events:
                last_gone = time.monotonic()
            return bool(events)

        while pending:
            now = time.monotonic()
            if alive_at_1s is None and now >= killed + 1.0:
                while gone(0):  # what died before now, not what this process got to read
                    pass
                alive_at_1s = len(pending)
                unsignalled = sum(not _doomed(fds[fd]) for fd in pending
                                  if fds[fd] != cleaner)
            until = killed + (1.0 if alive_at_1s is None else 10.0)
            if now >= until:
                break
            gone(until - now)
        for fd in pending:  # the benchmark itself must not leak what it measured
            try:
                os.kill(fds[fd], signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        ep.close()
        for fd in fds:
            os.close(fd)
        if realtime:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    gone_ms = None if pending else round((last_gone - killed) * 1000, 1)
    return alive_at_1s or 0, unsignalled, gone_ms


_PF_EXITING = 0x4  # include/linux/sched.h
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _doomed(os_pid: int) -> bool:
    """Whether a process can no longer run a line of its code: SIGKILL pending
    (it cannot be blocked or caught) or already exiting (or gone)."""
    try:
        with open(f"/proc/{os_pid}/stat") as f:
            flags = int(f.read().rsplit(")", 1)[1].split()[6])
        if flags & _PF_EXITING:
            return True
        with open(f"/proc/{os_pid}/status") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")) and \
                        int(line.split()[1], 16) & _SIGKILL_BIT:
                    return True
    except (FileNotFoundError, ProcessLookupError):
        return True
    return False


_GROWTH_PROGRAM = textwrap.dedent("""
    import json, os, sys, time, otpy
    from otpy import lowlevel

    # A program that imports only otpy, and bodies by reference from otpy
    # itself, so that its processes weigh what otpy makes them weigh.
    def zygote_rss():
        with open(f"/proc/{lowlevel.zygote_os_pid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    live, n, warmup = (int(a) for a in sys.argv[1:])
    me = otpy.self()
    before = zygote_rss()
    for _ in range(live):
        otpy.spawn(otpy.receive)
    after = zygote_rss()
    samples = []
    for _ in range(warmup + n):
        t = time.perf_counter_ns()
        pid, ref = otpy.spawn_monitor(otpy.send, me, "up")
        otpy.receive(timeout=60, match=lambda m: m == "up")
        samples.append(time.perf_counter_ns() - t)
        otpy.receive(timeout=60, match=lambda m, r=ref: isinstance(m, otpy.Down) and m.ref == r)
    print(json.dumps({"samples": samples[warmup:], "rss_before": before, "rss_after": after,
                      "os_pids": [p.os_pid for p in otpy.processes() if p != me]
                                 + [lowlevel.zygote_os_pid(), lowlevel.keeper_os_pid()],
                      "keeper": lowlevel.keeper_os_pid()}), flush=True)
    sys.stdin.read()
""")


def growth(live: int, n: int, warmup: int) -> dict[str, Any]:
    """A program with ``live`` idle processes: spawn latency (as spawn_ms), the
    zygote's RSS growth per process, its processes alive 1 s after a SIGKILL of
    the program, and how long until the last was gone."""
    proc = subprocess.Popen([sys.executable, "-c", _GROWTH_PROGRAM, str(live), str(n),
                             str(warmup)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the program with {live} processes did not report")
        report = json.loads(line)
        orphans, unsignalled, gone_ms = _alive_after_kill(proc, report["os_pids"],
                                                          cleaner=report["keeper"])
    finally:
        proc.stdin.close()
        proc.stdout.close()
    return {"spawn": summarize(report["samples"], 1e6),
            "zygote_kib_per_process": round((report["rss_after"] - report["rss_before"])
                                            / 1024 / max(1, live), 1),
            "orphans": orphans, "unsignalled": unsignalled, "all_gone_ms": gone_ms}


_BARE_FORKS_PROGRAM = textwrap.dedent("""
    import json, os, signal, sys
    os_pids = []
    for _ in range(int(sys.argv[1])):
        os_pid = os.fork()
        if os_pid == 0:
            while True:
                signal.pause()
        os_pids.append(os_pid)
    print(json.dumps(os_pids), flush=True)
    sys.stdin.read()
""")


def bare_forks_after_kill(n: int) -> dict[str, Any]:
    """The kernel's floor for ``orphans_after_kill_at_N``: a Python program that
    imports nothing forks ``n`` children that only wait, and the whole group is
    SIGKILLed at once. Most of the time goes to tearing down each child's copy
    of its parent's page tables, which a bigger parent (otpy's, the program's
    own modules) makes longer."""
    with _forking_program(_BARE_FORKS_PROGRAM, n) as (proc, os_pids):
        alive, _, gone_ms = _alive_after_kill(proc, os_pids, group=True)
    return {"alive": alive, "all_gone_ms": gone_ms}


@contextlib.contextmanager
def _forking_program(source: str, n: int) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """A Python program that starts ``n`` processes that only wait and prints
    their os pids: the program and those pids. Whatever happens, none of them
    outlives the block (the program has a process group of its own)."""
    proc = subprocess.Popen([sys.executable, "-c", source, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the program starting {n} processes did not report")
        yield proc, json.loads(line)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def growth_cases(sizes: list[int], n: int, warmup: int) -> list[tuple[str, Callable[[], Any]]]:
    """One program per size, and the bare forks beside the largest; their
    figures become the keys ``*_at_<size>`` (the kill's from 1,000 up)."""
    cases = []
    last = sizes[-1]
    for size in sizes:
        part = _measured_once(lambda size=size: growth(size, n, warmup))
        cases.append((f"spawn_ms_at_{size}", part("spawn")))
        if size > 10:  # at 10 the growth is within the noise
            cases.append((f"zygote_kib_per_process_at_{size}", part("zygote_kib_per_process")))
        if size >= 1000:
            cases.append((f"orphans_after_kill_at_{size}", part("orphans")))
            cases.append((f"unsignalled_after_kill_at_{size}", part("unsignalled")))
            cases.append((f"all_gone_ms_after_kill_at_{size}", part("all_gone_ms")))
    bare = _measured_once(lambda: bare_forks_after_kill(last))
    cases.append((f"orphans_after_kill_bare_forks_at_{last}", bare("alive")))
    cases.append((f"all_gone_ms_after_kill_bare_forks_at_{last}", bare("all_gone_ms")))
    return cases


def _measured_once(measure: Callable[[], dict[str, Any]]) -> Callable[[str], Callable[[], Any]]:
    """Cases that each report one figure of a single measurement: ``part(key)``
    is the case for ``key``; the first of them to run takes the measurement."""
    measured: list[dict[str, Any]] = []

    def part(key: str) -> Callable[[], Any]:
        def case() -> Any:
            if not measured:
                measured.append(measure())
            return measured[0][key]
        return case
    return part


class _Counter(otpy.GenServer):
    def init(self):
        self.count = 0

    def handle_call(self, request, caller):
        return self.count if request == "count" else request

    def handle_cast(self, request):
        self.count += 1


def call_rtt(n: int, warmup: int) -> dict:
    """otpy.call from the program's process to a GenServer in another process."""
    pid = _Counter.start_link()
    try:
        samples = []
        for i in range(warmup + n):
            t = _ns()
            otpy.call(pid, i)
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e3)
    finally:
        otpy.stop(pid)


def calls_per_s(threads: int, n: int, rounds: int = 3) -> int:
    """Calls per second when ``threads`` threads of the program's process share
    ``n`` calls to one GenServer; the median of ``rounds`` rounds (this is the
    noisiest figure on a 2-core VM)."""
    pid = _Counter.start_link()
    per_thread = n // threads
    rates = []
    failures: list[BaseException] = []
    try:
        for _ in range(rounds):
            start = threading.Barrier(threads + 1)

            def calls() -> None:
                start.wait()
                try:
                    for i in range(per_thread):
                        otpy.call(pid, i)
                except BaseException as exc:  # a rate counting failed calls would lie
                    failures.append(exc)

            workers = [threading.Thread(target=calls) for _ in range(threads)]
            for w in workers:
                w.start()
            start.wait()
            t = _ns()
            for w in workers:
                w.join()
            if failures:
                raise failures[0]
            rates.append(per_thread * threads / ((_ns() - t) / 1e9))
        return round(statistics.median(rates))
    finally:
        otpy.stop(pid)


class _LiveView:
    """``python -m otpy.observer NODE`` in a pseudo-terminal (``pty.spawn`` in a
    wrapper process drains its screen, so nothing here competes with the
    measured calls); ready once it has read the node ten times, past its start-up."""

    def __init__(self, node: str, interval: float) -> None:
        from otpy.observer import find_node
        from otpy.observer._nodes import find_fd
        from otpy.lowlevel.observation import PAGE_NAME, page_seq

        zygote = find_node(node).zygote_os_pid
        page = os.open(f"/proc/{zygote}/fd/{find_fd(zygote, PAGE_NAME)}", os.O_RDONLY)
        start = page_seq(page)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import pty, sys; pty.spawn(sys.argv[1:])", sys.executable,
             "-m", "otpy.observer", node, "--interval", str(interval)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, TERM="xterm-256color"))
        try:
            deadline = time.monotonic() + 30
            while page_seq(page) < start + 20:  # ten complete reads
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("the live view did not read the node within 30s")
                time.sleep(0.01)
        finally:
            os.close(page)

    def close(self) -> None:
        try:
            self.proc.stdin.write(b"q")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class Skipped(Exception):
    """A case that cannot run here (an optional extra is missing); says how to install it."""


def call_rtt_observed(n: int, warmup: int) -> dict:
    """call_rtt with the live view attached to this node, refreshing every 0.1 s."""
    try:
        import textual  # noqa: F401 - the live view's terminal UI
    except ImportError:
        raise Skipped("the observer extra is not installed: pip install -e '.[observer]'") \
            from None
    view = _LiveView(otpy.self().node, OBSERVER_INTERVAL)
    try:
        return call_rtt(n, warmup)
    finally:
        view.close()


def cast_per_s(n: int) -> float:
    """Casts one process pushes to a counting GenServer, confirmed by a final call."""
    pid = _Counter.start_link()
    try:
        for _ in range(n // 10):  # warm-up
            otpy.cast(pid, 1)
        otpy.call(pid, "count")
        t = _ns()
        for _ in range(n):
            otpy.cast(pid, 1)
        total = otpy.call(pid, "count", timeout=60)
        elapsed = (_ns() - t) / 1e9
        assert total == n + n // 10, total
        return round(n / elapsed)
    finally:
        otpy.stop(pid)


def restart_ms(n: int, warmup: int) -> dict:
    """SIGKILL of a named GenServer under a supervisor to its replacement answering by name."""
    sup = otpy.Supervisor.start_link([_Counter.child_spec(name="bench_restart")],
                                     max_restarts=10 * (n + warmup), max_seconds=3600)
    try:
        samples = []
        for _ in range(warmup + n):
            old = otpy.whereis("bench_restart")
            t = _ns()
            os.kill(old.os_pid, signal.SIGKILL)
            while True:  # ask by name until the replacement answers
                try:
                    otpy.call("bench_restart", "ping", timeout=10)
                    if otpy.whereis("bench_restart") != old:
                        break
                except (otpy.NoProc, otpy.Exited):
                    pass
            samples.append(_ns() - t)
        return summarize(samples[warmup:], 1e6)
    finally:
        otpy.Supervisor.stop(sup)


def isolated_tree_ms(n: int, warmup: int) -> dict:
    """Enter + exit of an empty isolated_tree."""
    from otpy.testing import isolated_tree

    samples = []
    for i in range(warmup + n):
        t = _ns()
        with isolated_tree(f"bench_{i}"):
            pass
        samples.append(_ns() - t)
    return summarize(samples[warmup:], 1e6)


def _stop(pid: otpy.Pid) -> None:
    ref = otpy.monitor(pid)
    otpy.send(pid, None)
    try:
        otpy.receive(timeout=5, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
    except otpy.Timeout:
        _kill(pid)


def _kill(pid: otpy.Pid) -> None:
    if otpy.is_alive(pid):
        ref = otpy.monitor(pid)
        otpy.exit(pid, "kill")
        otpy.receive(timeout=5, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)


# ---- running and reporting (shared with otpy_pool.bench) -------------------------

Case = tuple[str, Callable[[], Any]]  # a result key, and what measures it


def plan(quick: bool) -> list[Case]:
    rtt_n, rtt_w = (500, 100) if quick else (20000, 2000)
    sp_n, sp_w = (20, 5) if quick else (300, 30)
    casts = 2000 if quick else 100000
    threaded_calls = 1600 if quick else 48000
    imports = 5 if quick else 20
    startup = _measured_once(lambda: import_and_startup(imports))
    memory = _measured_once(lambda: memory_per_process(5))
    return [
        ("python_startup_ms", startup("python_startup_ms")),
        ("import_otpy_ms", startup("import_otpy_ms")),
        ("pipe_pickle_rtt_us", lambda: pipe_pickle_rtt(rtt_n, rtt_w)),
        ("send_receive_rtt_us", lambda: send_receive_rtt(rtt_n, rtt_w)),
        ("call_rtt_us", lambda: call_rtt(rtt_n, rtt_w)),
        ("call_rtt_observed_us", lambda: call_rtt_observed(rtt_n, rtt_w)),
        ("cast_per_s", lambda: cast_per_s(casts)),
        ("calls_per_s_1_thread", lambda: calls_per_s(1, threaded_calls)),
        ("calls_per_s_16_threads", lambda: calls_per_s(16, threaded_calls)),
        ("bare_fork_ms", lambda: bare_fork_ms(sp_n, sp_w)),
        ("spawn_ms", lambda: spawn_ms(sp_n, sp_w)),
        *((key, memory(key)) for key in ("shared_kib_per_process", "written_kib_per_process",
                                         "shared_kib_per_bare_fork",
                                         "written_kib_per_bare_fork")),
        ("down_ms", lambda: down_ms(sp_n, sp_w)),
        ("restart_ms", lambda: restart_ms(sp_n, sp_w)),
        ("isolated_tree_ms", lambda: isolated_tree_ms(sp_n, sp_w)),
        ("orphans_after_root_kill", orphans_after_root_kill),
        # the 5,000-process program takes about a minute: full runs only
        *growth_cases([10, 1000] if quick else [10, 1000, 5000], sp_n, sp_w),
    ]


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def run(quick: bool, progress: Any = sys.stderr) -> dict[str, Any]:
    with bytecode_cache():
        report = run_cases(plan(quick), RATIOS, quick, progress)
    report["gates"] = check_gates(report["results"], GATES)
    return report


_WARM_UP_PROGRAM = "import json, os, signal, sys, time, otpy; otpy.self()"


@contextlib.contextmanager
def bytecode_cache() -> Iterator[None]:
    """The Python programs the benchmark starts read compiled bytecode, from
    a temporary cache of their own (PYTHONPYCACHEPREFIX, removed after), as
    they would wherever Python may write it: under PYTHONDONTWRITEBYTECODE
    each of them would compile otpy's sources again, which costs time (the
    import) and memory (the compiler's leftovers, shared by every process)."""
    names = ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="otpy-bench-pycache-") as cache:
        os.environ["PYTHONPYCACHEPREFIX"] = cache
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        try:
            # what the programs import, compiled once: else the first program to
            # import a module would pay for it (and keep the compiler's leftovers)
            subprocess.run([sys.executable, "-c", _WARM_UP_PROGRAM], check=True)
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def run_cases(cases: list[Case], ratios: dict[str, tuple[str, str]], quick: bool,
              progress: Any = sys.stderr,
              expand: Callable[[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure every case, whatever fails (a failure is reported, not raised, so
    one run gives every figure it can), then the ``ratios``: the report that
    ``--json`` writes and ``--compare`` reads (gates are each benchmark's own). ``expand`` turns a case's key and
    value into result keys, for a case that measures several figures at once."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for i, (key, case) in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {key} ...", file=progress, flush=True)
        try:
            value = case()
        except Skipped as why:
            skipped[key] = str(why)
            continue
        except Exception as exc:  # report the failure, keep measuring the rest
            errors[key] = f"{type(exc).__name__}: {exc}"
            continue
        results.update(expand(key, value) if expand else {key: value})
    report = {"machine": machine(), "quick": quick, "results": results,
              "ratios": divide(results, ratios)}
    if skipped:
        report["skipped"] = skipped
    if errors:
        report["errors"] = errors
    return report


def divide(results: dict[str, Any], ratios: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Each ratio's two keys divided: their p50s (``key:p99`` names another
    percentile), or plain figures (rates, sizes) as they are; a ratio with a
    key missing (skipped, failed) is left out."""
    out = {}
    for name, (top, bottom) in ratios.items():
        a, b = _figure(results, top), _figure(results, bottom)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[name] = round(a / b, 3)
    return out


def _figure(results: dict[str, Any], key: str) -> Any:
    key, _, stat = key.partition(":")
    value = results.get(key)
    return value.get(stat or "p50") if isinstance(value, dict) else value


def check_gates(results: dict[str, Any], gates: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each gate's figure beside its limit (the most it may be), for the figures
    this run took; a missing figure (None: not measured within the case's
    time) fails its gate."""
    out = {}
    for key, limit in gates.items():
        if key in results:
            value = results[key]
            out[key] = {"value": value, "limit": limit,
                        "ok": isinstance(value, (int, float)) and value <= limit}
    return out


def table(report: dict[str, Any]) -> str:
    """The report as text, keys in a column as wide as the longest."""
    width = max((len(key) for part in ("results", "ratios", "gates", "skipped", "errors")
                 for key in report.get(part, {})), default=3)
    lines = [f"{'key':{width}} {'p50':>10} {'p99':>10} {'n':>7}"]
    for key, value in report["results"].items():
        if isinstance(value, dict) and "p50" in value:
            lines.append(f"{key:{width}} {value['p50']:>10} {value['p99']:>10} {value['n']:>7}")
        elif isinstance(value, dict):  # figures of another kind: each by its name
            lines.append(f"{key:{width}} " + ", ".join(f"{k}={v}" for k, v in value.items()))
        else:  # None: a figure the run could not take (see the key's description)
            lines.append(f"{key:{width}} {'-' if value is None else value:>10}")
    lines.append("")
    for name, value in report["ratios"].items():
        lines.append(f"{name:{width}} {value:>10}")
    for key, gate in report.get("gates", {}).items():
        verdict = "ok" if gate["ok"] else "GATE FAILED"
        lines.append(f"{key:{width}} {verdict:>10}  (at most {gate['limit']})")
    for key, why in report.get("skipped", {}).items():
        lines.append(f"{key:{width}} {'skipped':>10}  ({why})")
    for key, why in report.get("errors", {}).items():
        lines.append(f"{key:{width}} {'FAILED':>10}  ({why})")
    m = report["machine"]
    lines.append(f"\nmachine: {m['cpus']} cpus, {m['cpu_model']}, Python {m['python']}")
    return "\n".join(lines)


def compare(report: dict[str, Any], baseline: dict[str, Any], margin: float) -> list[str]:
    """Ratios that regressed by more than ``margin`` against the baseline."""
    regressions = []
    both = [name for name in baseline.get("ratios", {}) if name in report["ratios"]]
    width = max((len(name) for name in both), default=0)
    for name in both:
        old, new = baseline["ratios"][name], report["ratios"][name]
        change = new / old - 1
        verdict = "REGRESSED" if change > margin else "ok"
        print(f"{name:{width}} baseline {old:>8} now {new:>8} ({change:+.0%}) {verdict}")
        if change > margin:
            regressions.append(name)
    return regressions


def main(argv: list[str] | None = None) -> int:
    return cli("python -m otpy.bench", __doc__, lambda args: run(args.quick), argv,
               comparable=_comparable)


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report with only the ratios ``--compare`` checks."""
    ratios = {k: v for k, v in report.get("ratios", {}).items() if k not in UNCOMPARED}
    return dict(report, ratios=ratios)


def cli(prog: str, description: str, measure: Callable[[argparse.Namespace], dict[str, Any]],
        argv: list[str] | None = None, *, options: dict[str, dict[str, Any]] | None = None,
        comparable: Callable[[dict[str, Any]], dict[str, Any]] = lambda report: report) -> int:
    """A benchmark's command line, shared with ``python -m otpy_pool.bench``:
    ``measure`` runs the cases for the parsed arguments, among them the extra
    ``options`` (flag: add_argument's keywords); ``comparable`` makes every
    ratio "lower is better" for ``--compare``. Exit status 1 on a failed case,
    a failed gate or a regression."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run, in seconds")
    for flag, settings in (options or {}).items():
        parser.add_argument(flag, **settings)
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON ('-': stdout)")
    parser.add_argument("--compare", metavar="BASELINE", help="compare ratios with a saved report")
    parser.add_argument("--margin", type=float, default=0.25,
                        help="allowed ratio regression for --compare (default 0.25)")
    parser.add_argument("--verbose", action="store_true", help="show the node's logs")
    args = parser.parse_args(argv)
    if not args.verbose:  # restarts and crash reports are what the cases measure, not news
        otpy.configure_logging(level="critical")
    report = measure(args)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(table(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    failed_gate = any(not gate["ok"] for gate in report.get("gates", {}).values())
    status = 1 if report.get("errors") or failed_gate else 0
    if args.compare:
        with open(args.compare) as f:
            baseline = json.load(f)
        if compare(comparable(report), comparable(baseline), margin=args.margin):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
