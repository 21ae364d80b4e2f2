"""A web service in front of a session pool: Starlette, served by uvicorn.

Each user's notes live in a worker process (a session): a stand-in for the
state a real service keeps per user in a model server, an interpreter or a
browser. The endpoints await the pool (``aexecute``), so one event loop
serves any number of requests in flight without a thread each::

    POST   /sessions/{sid}/notes   {"note": "..."}  add a note (replayed after a crash)
    GET    /sessions/{sid}                          the notes, and the worker's os pid
    DELETE /sessions/{sid}                          end the session
    GET    /status                                  the pool's status

A worker that dies (try ``kill -9`` on a pid GET shows) fails only the
request whose command it was running, with a 503 and a JSON body saying
so; the requests queued behind it run on its replacement, and each session
finds its notes there (its ``add`` commands are replayed). Ctrl-C or
SIGTERM stops the server, then the pool: no process is left.

Needs ``pip install 'otpy[web]'``. Try it::

    python examples/web_service.py --port 8000
    curl -s -X POST localhost:8000/sessions/ada/notes -d '{"note": "links are symmetric"}'
    curl -s localhost:8000/sessions/ada

Run: python examples/web_service.py [--port 8000] [--workers 2] [--work SECONDS]
                                   [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
except ImportError as missing:  # the extra is not installed: say so, no traceback
    sys.exit(f"web_service.py needs {missing.name.split('.')[0]}: pip install 'otpy[web]'")

import otpy
from otpy import lowlevel
from otpy_pool import (CommandTimeout, Pool, PoolError, PoolNotRunning, PoolOverloaded,
                       PoolTimeout, PoolUnavailable, SessionLost, SessionNotFound, Worker,
                       WorkerCrashed, command)


class Notes(Worker):
    """One worker process; each session's notes are in its ``session.state``."""

    def init(self, work: float) -> None:
        self.work = work  # seconds each note takes: a stand-in for real work

    @command(replay=True)  # builds session state: replayed on a new worker
    def add(self, session, note):
        time.sleep(self.work)
        session.state.setdefault("notes", []).append(note)
        return len(session.state["notes"])

    @command
    def notes(self, session):
        return {"notes": session.state.get("notes", []), "worker": os.getpid()}


# ---- the endpoints ---------------------------------------------------------------------------

async def add_note(request: Request) -> JSONResponse:
    sid = request.path_params["sid"]
    try:
        note = (await request.json())["note"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "bad_request", "detail": 'send {"note": "..."}'}, 400)
    count = await request.state.pool.aexecute("add", note, session=sid)
    return JSONResponse({"session": sid, "count": count})


async def get_session(request: Request) -> JSONResponse:
    sid = request.path_params["sid"]
    found = await request.state.pool.aexecute("notes", session=sid)
    return JSONResponse({"session": sid, **found})


# A plain ``def`` endpoint runs in Starlette's thread pool: the blocking
# forms of the pool work there too, beside the awaited ones.
def end_session(request: Request) -> JSONResponse:
    request.state.pool.end_session(request.path_params["sid"])
    return JSONResponse({"session": request.path_params["sid"], "ended": True})


def status(request: Request) -> JSONResponse:
    figures = dataclasses.asdict(request.state.pool.status())
    # in_flight is keyed by worker pid: by OS pid here, for JSON
    figures["in_flight"] = {pid.os_pid: n for pid, n in figures["in_flight"].items()}
    return JSONResponse(figures)


# ---- the pool's errors, as HTTP answers -------------------------------------------------------

# (error classes, HTTP status, what the client may do): the first that matches answers
ANSWERS = [
    (WorkerCrashed, 503, "the worker running this request died; the session's earlier "
                         "notes are kept (replayed on a new worker): retry"),
    (CommandTimeout, 504, "the command ran past its deadline; its worker was replaced"),
    (SessionNotFound, 404, "no such session"),
    (SessionLost, 500, "the session's state could not be rebuilt; it starts empty"),
    ((PoolTimeout, PoolOverloaded, PoolUnavailable, PoolNotRunning), 503,
     "the service is busy or restarting: retry later"),
    (PoolError, 500, "the pool failed this request"),
]


async def pool_error(request: Request, exc: Exception) -> JSONResponse:
    for kinds, code, hint in ANSWERS:
        if isinstance(exc, kinds):
            break
    body = {"error": type(exc).__name__, "detail": str(exc), "hint": hint,
            "session": request.path_params.get("sid")}
    return JSONResponse(body, code, headers={"Retry-After": "1"} if code == 503 else None)


def make_app(workers: int, work: float, timeout: float) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # Startup: the pool, linked to this program (starting its workers
        # blocks the loop briefly, once). What is yielded is each request's
        # ``request.state``. Shutdown (Ctrl-C, SIGTERM), once uvicorn has
        # stopped serving: the pool stops, its workers first.
        pool = Pool.start_link(Notes, args=(work,), size=workers, command_timeout=timeout,
                               name="notes")
        try:
            yield {"pool": pool}
        finally:
            pool.stop()

    return Starlette(routes=[
        Route("/sessions/{sid}/notes", add_note, methods=["POST"]),
        Route("/sessions/{sid}", get_session, methods=["GET"]),
        Route("/sessions/{sid}", end_session, methods=["DELETE"]),
        Route("/status", status, methods=["GET"]),
    ], exception_handlers={PoolError: pool_error}, lifespan=lifespan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (default 8000)")
    parser.add_argument("--addr", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--work", type=float, default=0.01,
                        help="seconds a worker spends on each note (default 0.01)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="a command's deadline in seconds: past it, its worker is "
                             "replaced and the request gets a 504 (default 30)")
    args = parser.parse_args()

    # Start otpy's node before uvicorn: its SIGTERM handler (an orderly stop,
    # as Ctrl-C) is then the one uvicorn hands the signal back to at the end.
    lowlevel.start()
    # Listening before uvicorn starts: the URL printed is ready to connect
    # to (the first requests wait until the pool is up).
    sock = socket.create_server((args.addr, args.port))
    host, port = sock.getsockname()[:2]
    print(f"notes service of node {otpy.self().node} at http://{host}:{port}/", flush=True)
    config = uvicorn.Config(make_app(args.workers, args.work, args.timeout), log_level="warning",
                            timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stopped, then passed the signal on
        print("\nCtrl-C", flush=True)
    except SystemExit as exc:
        if exc.code != 128 + signal.SIGTERM:  # uvicorn's own exit (a failed startup)
            raise
        print("SIGTERM", flush=True)
    finally:
        sock.close()
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
