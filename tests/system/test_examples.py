"""The README's examples, each run as a reader would run it: the demo (an
application tree that crashes and recovers), one program per part, and a
user's pytest file. Each ends by itself (or by Ctrl-C), says what it
showed, and leaves no process, port or file behind."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys

import psutil

from helpers import DEADLINE, ROOT, ctrl_c_restored
from metrics_helpers import scrape, value
from otpy.testing import wait_for

EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def assert_stopped_cleanly(stdout: str) -> None:
    """The example's node ended with only the program's own process, and no
    process of that node outlives the program."""
    found = re.search(r"stopped node (\w+); processes left besides this program: \[\]", stdout)
    assert found, stdout
    node = found.group(1)
    wait_for(lambda: not [p for p in psutil.process_iter(["name"])
                          if p.info["name"] == f"otpy-{node}"])


def test_demo_runs_for_a_bounded_time_and_leaves_no_process():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--duration", "3",
                          "--crash-every", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    node = re.search(r"node (\w+) is running", out.stdout).group(1)
    assert f"-m otpy.observer {node}" in out.stdout
    assert re.search(r"round 1: 16 processes", out.stdout)
    # the notebook pool's session survived its worker's SIGKILL by replay
    assert re.search(r"chaos: SIGKILL alice's worker", out.stdout)
    assert re.search(r"alice still remembers 2 facts, replayed on .*recovered sessions: 1",
                     out.stdout)
    assert "stopped cleanly; processes left: []\n" in out.stdout
    # the flaky worker crashed and came back: a crash report with its traceback
    assert "crash report" in out.stderr and "child_id=flaky" in out.stderr
    assert 'raise RuntimeError("flaky crashed on purpose")' in out.stderr
    assert re.search(r"child restarted .*child_id=flaky", out.stderr)
    strays = [p for p in psutil.process_iter(["name"]) if p.info["name"] == f"otpy-{node}"]
    assert strays == []


def test_supervision_restarts_the_crashed_child_and_gives_up_past_its_intensity():
    out = run_example("supervision.py")
    for n in (1, 2, 3):
        assert f"crash {n}: the till exited with ValueError('a till cannot take -1')" in out.stdout
        assert f"till restarted ({n} restarts), a fresh till takes 5: 5" in out.stdout
    assert out.stdout.count("prices kept its state: coffee costs 4") == 3
    assert_stopped_cleanly(out.stdout)
    out = run_example("supervision.py", "--crashes", "5")
    assert "crash 4:" in out.stdout and "the shop gave up" in out.stdout
    assert "crash 5:" not in out.stdout
    assert_stopped_cleanly(out.stdout)


def test_pool_sessions_survive_their_workers_sigkill():
    out = run_example("pool_sessions.py")
    before = re.search(r"alice's worker is os pid (\d+)", out.stdout).group(1)
    assert f"SIGKILLed os pid {before}" in out.stdout
    after = re.search(r"alice now on os pid (\d+), remembers \['otp is 25 years old', "
                      r"'links are symmetric'\]", out.stdout)
    assert after and after.group(1) != before, out.stdout
    assert "bob remembers ['monitors are not']" in out.stdout
    assert_stopped_cleanly(out.stdout)


def test_the_executor_serves_on_after_a_workers_sigkill():
    out = run_example("executor.py")
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out.stdout
    assert "the killed worker's task failed: BrokenWorker: the worker exited: killed" in out.stdout
    assert "the executor serves on: 144" in out.stdout
    assert_stopped_cleanly(out.stdout)


def test_protected_calls_retry_then_fall_back_then_recover():
    out = run_example("protected_calls.py")
    assert re.search(r"flaky service at http://127\.0\.0\.1:\d+/", out.stdout)
    assert "flaky: 6 calls, 8 requests" in out.stdout  # two 503s, each retried once
    assert "retried and recovered: 2" in out.stdout
    # the breaker opened on the first failure of the outage: the service got one request
    assert "down: 5 calls, 1 requests, breaker open, answers: " + str(["cached answer"] * 5) \
        in out.stdout
    assert re.search(r"up: 'answer \d+', breaker closed", out.stdout)
    assert_stopped_cleanly(out.stdout)


def test_a_users_pytest_file_runs_with_the_plugin(tmp_path):
    """examples/test_with_otpy.py in a project of its own, run as its user would."""
    shutil.copy(EXAMPLES / "test_with_otpy.py", tmp_path)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "test_with_otpy.py"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout
    out = subprocess.run(command + ["--otpy-layer", "mock"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed, 2 skipped" in out.stdout


def test_the_metrics_example_serves_its_restarts_until_ctrl_c():
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "metrics.py"), "--port", "0",
                             "--crash-every", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=ctrl_c_restored)
    try:
        url = re.search(r"metrics of node \w+ at (http://\S+)", proc.stdout.readline()).group(1)
        # the program, app, steady, flaky; the pool's supervisor, server, workers'
        # supervisor and two workers: 9, but for the moments flaky is down (it
        # crashes every 0.2 s), which a scrape may see
        figures = wait_for(lambda: (f := scrape(url)) and value(
            f, "otpy_supervisor_restarts_total", 0.0, supervisor="app", child="flaky") >= 2
            and value(f, "otpy_processes") == 9 and f, timeout=DEADLINE)
        assert value(figures, "otpy_exits_total", reason="error") >= 2
        figures = wait_for(lambda: (f := scrape(url)) and value(
            f, "otpy_pool_commands_total", 0.0, pool="lookup", command="find",
            outcome="error") >= 1 and f, timeout=DEADLINE)
        ok = value(figures, "otpy_pool_commands_total", pool="lookup", command="find",
                   outcome="ok")
        assert ok >= 4 and value(figures, "otpy_pool_command_duration_seconds_count",
                                 pool="lookup", command="find") >= ok
        assert sum(value(figures, "otpy_pool_workers", pool="lookup", state=state)
                   for state in ("idle", "busy", "leaving")) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE) == 0
        assert_stopped_cleanly(proc.stdout.read())
        host, port = re.search(r"//([\d.]+):(\d+)/", url).groups()
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            raise AssertionError(f"{url} still listens after the example ended")
        except ConnectionRefusedError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()
