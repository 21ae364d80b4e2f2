"""examples/web_service.py as a service is run: a Starlette app under
uvicorn on 127.0.0.1 (an ephemeral port), loaded by concurrent httpx
clients while a worker is SIGKILLed. Only the request whose command was
running on that worker fails (a 503 with a clear body); the requests queued
behind it run on a new worker; every session keeps its notes (replay); the
server stays up; SIGTERM or Ctrl-C stops it with no process or port left.
Without the web extra the test skips, and the example says what to install."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from helpers import DEADLINE, ROOT, ctrl_c_restored, wait_gone
from otpy_pool import (CommandTimeout, PoolError, PoolNotRunning, PoolOverloaded, PoolTimeout,
                       PoolUnavailable, SessionLost, SessionNotFound, WorkerCrashed)

EXAMPLE = ROOT / "examples" / "web_service.py"
HINT = "pip install 'otpy[web]'"
USERS = 12  # sessions, each a client sending its notes one after another
NOTES = 10  # notes per user and round
WORK = 0.02  # seconds a worker spends on a note: its queue is never empty under load


class Service:
    """The example running as a program of its own."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.stderr = open(tmp_path / "stderr", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", *args], stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, preexec_fn=ctrl_c_restored)
        line = self.readline()
        found = re.search(r"notes service of node (\w+) at (http://127\.0\.0\.1:(\d+)/)", line)
        assert found, line + self.errors()
        self.node, self.url, self.port = found.group(1), found.group(2), int(found.group(3))
        self.seen: set[int] = set()  # every OS process of the program's tree, ever seen

    def readline(self) -> str:
        """The next line of its output, within the deadline."""
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        assert ready, "the example printed nothing within the deadline" + self.errors()
        return self.proc.stdout.readline()

    def errors(self) -> str:
        self.stderr.seek(0)
        return "\n" + self.stderr.read()[-4000:]

    def tree(self) -> set[int]:
        """The OS pids of the program and everything under it now (also kept in ``seen``)."""
        me = psutil.Process(self.proc.pid)
        pids = {self.proc.pid} | {p.pid for p in me.children(recursive=True)}
        self.seen |= pids
        return pids

    def stop(self, signum: int) -> str:
        """Send ``signum``; the program must end by itself, with exit code 0,
        leaving no process of its tree and no listening port. Its output."""
        self.tree()
        self.proc.send_signal(signum)
        assert self.proc.wait(timeout=DEADLINE) == 0, self.errors()
        out = self.proc.stdout.read()
        assert wait_gone(self.seen) == [], f"left behind: {wait_gone(self.seen, 0)}"
        assert not [p for p in psutil.process_iter(["name"])
                    if p.info["name"] == f"otpy-{self.node}"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE).close()
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture
def service(tmp_path):
    pytest.importorskip("starlette", reason=f"the web extra: {HINT}")
    pytest.importorskip("uvicorn", reason=f"the web extra: {HINT}")
    started = []

    def start(*args: str) -> Service:
        started.append(Service(tmp_path, *args))
        return started[-1]

    yield start
    for one in started:
        one.close()


def run(coroutine):
    async def bounded():
        return await asyncio.wait_for(coroutine, 6 * DEADLINE)
    return asyncio.run(bounded())


async def worker_of(client, sid: str) -> int:
    answer = await client.get(f"/sessions/{sid}")
    assert answer.status_code == 200, answer.text
    return answer.json()["worker"]


async def round_with_a_kill(client, round_no: int, kept: dict) -> tuple[int, set, list]:
    """Every user sends NOTES notes, one after another, all users at once.
    When each has had 3 answers, the worker of user 0's session is SIGKILLed.
    Returns the killed OS pid, the sessions that had a request in flight
    then, and the failed requests as (sid, note, answer). ``kept`` (sid ->
    the notes the service confirmed) is updated."""
    victim = await worker_of(client, "u0")
    answered = {f"u{i}": 0 for i in range(USERS)}
    everyone_answered = asyncio.Event()
    failed = []
    inflight = set()

    async def user(sid: str) -> None:
        for n in range(NOTES):
            note = f"r{round_no}-{sid}-{n}"
            inflight.add(sid)
            answer = await client.post(f"/sessions/{sid}/notes", json={"note": note})
            inflight.discard(sid)
            if answer.status_code == 200:
                kept[sid].append(note)
                # its place among the session's notes (one more if a failed
                # note was recorded after all: see the test)
                count = answer.json()["count"]
                assert len(kept[sid]) <= count <= len(kept[sid]) + len(failed)
            else:
                failed.append((sid, note, answer))
            answered[sid] += 1
            if min(answered.values()) >= 3:
                everyone_answered.set()

    users = [asyncio.ensure_future(user(sid)) for sid in answered]
    await asyncio.wait_for(everyone_answered.wait(), DEADLINE)
    assert not all(u.done() for u in users)  # the load is still on
    os.kill(victim, signal.SIGKILL)
    waiting = set(inflight)  # sessions with a request in flight at the kill
    await asyncio.gather(*users)
    return victim, waiting, failed


def test_a_worker_sigkilled_under_load_fails_only_its_running_request(service):
    web = service("--workers", "2", "--work", str(WORK))
    import httpx

    async def scenario():
        kept = {f"u{i}": [] for i in range(USERS)}
        async with httpx.AsyncClient(base_url=web.url, timeout=DEADLINE) as client:
            # every session bound (its first note), and the sync endpoints used once
            for sid in kept:
                answer = await client.post(f"/sessions/{sid}/notes", json={"note": "hello"})
                assert answer.status_code == 200, answer.text
                kept[sid].append("hello")
            assert (await client.get("/status")).json()["workers"] == 2
            threads = psutil.Process(web.proc.pid).num_threads()
            web.tree()

            # Kill rounds, until one SIGKILL landed while a note was being added
            # (each round does: the workers are never idle under this load; a
            # kill in the microseconds between two commands fails nothing).
            crashes = []
            for round_no in range(3):
                sessions = {sid: await worker_of(client, sid) for sid in kept}
                victim, waiting, failed = await round_with_a_kill(client, round_no, kept)
                # several of the killed worker's sessions had a request in flight...
                on_victim = {sid for sid, pid in sessions.items() if pid == victim}
                assert len(waiting & on_victim) >= 2, (waiting, on_victim)
                # ...yet at most one failed: the one its worker was running (a
                # worker runs one command at a time); those queued behind it ran
                # on a new worker, after their session's replay
                assert len(failed) <= 1, [(s, n, a.status_code, a.text) for s, n, a in failed]
                for sid, note, answer in failed:
                    assert sessions[sid] == victim
                    assert answer.status_code == 503
                    assert answer.headers["retry-after"] == "1"
                    body = answer.json()
                    assert body["error"] == "WorkerCrashed" and body["session"] == sid
                    assert "the worker exited: killed" in body["detail"]
                    assert "earlier notes are kept" in body["hint"] and "retry" in body["hint"]
                    crashes.append((sid, note))
                # every session has exactly the notes the service confirmed, the
                # killed worker's sessions too (replayed on a new worker); the
                # failed note may be there too if the worker died between
                # recording it and answering (it ran at most once)
                for sid, notes in kept.items():
                    answer = await client.get(f"/sessions/{sid}")
                    assert answer.status_code == 200
                    got = answer.json()["notes"]
                    if got != notes:
                        extra = [n for n in got if n not in notes]
                        assert set(extra) <= {n for s, n in crashes if s == sid}, (got, notes)
                        assert got == sorted(notes + extra, key=order), (sid, got, notes)
                        notes[:] = got
                    assert answer.json()["worker"] != victim
                if failed:
                    break
            assert crashes, "no SIGKILL landed during a command in 3 rounds"

            # the server stayed up: the pool replaced each killed worker and
            # recovered the killed worker's sessions; no thread per request
            status = (await client.get("/status")).json()
            assert status["worker_restarts"] == round_no + 1 and status["workers"] == 2
            assert status["sessions_recovered"] >= 1 and status["sessions_lost"] == 0
            assert psutil.Process(web.proc.pid).num_threads() <= threads

            # the other answers: an unknown session's end, a bad body, an ended session
            answer = await client.delete("/sessions/nobody")
            assert answer.status_code == 404 and answer.json()["error"] == "SessionNotFound"
            answer = await client.post("/sessions/u1/notes", content=b"not json")
            assert answer.status_code == 400
            assert (await client.delete("/sessions/u1")).json() == {"session": "u1",
                                                                     "ended": True}
            assert (await client.get("/sessions/u1")).json()["notes"] == []

    run(scenario())
    out = web.stop(signal.SIGTERM)
    assert "SIGTERM" in out
    assert re.search(r"stopped node \w+; processes left besides this program: \[\]", out), out
    assert "crash report" in web.errors()  # the killed worker's, in the service's log


def order(note: str) -> tuple[int, int]:
    """A note's place in its session: (round, n); "hello" first."""
    if note == "hello":
        return (-1, -1)
    round_no, _, n = note.split("-")
    return (int(round_no[1:]), int(n))


def test_a_command_past_its_deadline_is_a_504_and_ctrl_c_stops_the_service(service):
    web = service("--workers", "1", "--work", "10", "--timeout", "0.3")
    import httpx

    async def scenario():
        async with httpx.AsyncClient(base_url=web.url, timeout=DEADLINE) as client:
            answer = await client.post("/sessions/s/notes", json={"note": "slow"})
            status = (await client.get("/status")).json()
            return answer, status

    answer, status = run(scenario())
    assert answer.status_code == 504, answer.text
    body = answer.json()
    assert body["error"] == "CommandTimeout" and body["session"] == "s"
    assert "ran past 300 ms" in body["detail"] and "worker was replaced" in body["hint"]
    assert status["timeouts"] == 1 and status["worker_restarts"] == 1
    out = web.stop(signal.SIGINT)
    assert "Ctrl-C" in out
    assert re.search(r"stopped node \w+; processes left besides this program: \[\]", out), out


@pytest.mark.parametrize("error, status", [
    (WorkerCrashed("killed"), 503), (CommandTimeout("late"), 504),
    (SessionNotFound("no s"), 404), (SessionLost("s", ValueError("gone")), 500),
    (PoolTimeout("busy"), 503), (PoolOverloaded("full"), 503),
    (PoolUnavailable(ValueError("init failed")), 503), (PoolNotRunning("stopped"), 503),
    (PoolError("other"), 500),
])
def test_each_pool_error_has_its_http_answer(error, status):
    """The example's exception handler, called as Starlette calls it."""
    pytest.importorskip("starlette", reason=f"the web extra: {HINT}")
    from starlette.requests import Request

    spec = importlib.util.spec_from_file_location("web_service", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    request = Request({"type": "http", "path_params": {"sid": "s"}})
    answer = asyncio.run(example.pool_error(request, error))
    assert answer.status_code == status
    assert json.loads(answer.body) == {
        "error": type(error).__name__, "detail": str(error), "session": "s",
        "hint": next(hint for kinds, _, hint in example.ANSWERS if isinstance(error, kinds))}
    assert answer.headers.get("retry-after") == ("1" if status == 503 else None)


@pytest.mark.parametrize("module", ["starlette", "uvicorn"])
def test_without_the_web_extra_the_example_says_what_to_install(module):
    blocker = (f"import runpy, sys; sys.modules[{module!r}] = None; "
               f"sys.argv = [{str(EXAMPLE)!r}]; runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert out.stderr == f"web_service.py needs {module}: {HINT}\n"  # no traceback
    assert out.stdout == ""
