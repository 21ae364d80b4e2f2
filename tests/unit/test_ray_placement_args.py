"""RayPlacement without a cluster: the install hint without Ray, its
arguments checked at once, the stand-in class it makes, and the actor's
session bookkeeping (``_Host``, run here without Ray)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import pytest

from otpy_pool import Pool, RayPlacement, Session, Worker, command
from otpy_pool._ray import CONNECT_MARGIN, _AsyncHost, _Host

from helpers import ROOT


class Shop(Worker):
    init_timeout = 7.0

    @command(replay=True)
    def add(self, session: Session, item: str) -> int:
        session.state.setdefault("items", []).append(item)
        return len(session.state["items"])

    @command
    def items(self, session: Session) -> list:
        return session.state.get("items", [])


def test_without_ray_it_says_how_to_install_it_at_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import ray fails
    with pytest.raises(ImportError, match=r"pip install 'otpy\[ray\]'"):
        RayPlacement()


def test_importing_otpy_pool_does_not_import_ray():
    out = subprocess.run([sys.executable, "-c", "import sys, otpy_pool, otpy_pool.testing, "
                          "otpy_pool.bench; print('ray' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_bad_arguments_are_refused_naming_them():
    pytest.importorskip("ray")
    with pytest.raises(TypeError, match="address"):
        RayPlacement(address=5)
    with pytest.raises(TypeError, match="address"):
        RayPlacement(address=" ")
    with pytest.raises(TypeError, match="resources"):
        RayPlacement(resources=["CPU"])
    with pytest.raises(ValueError, match=r"resources\['CPU'\]"):
        RayPlacement(resources={"CPU": -1})
    with pytest.raises(ValueError, match=r"resources\['GPU'\]"):
        RayPlacement(resources={"GPU": True})
    with pytest.raises(TypeError, match="runtime_env"):
        RayPlacement(runtime_env="pip")
    with pytest.raises(TypeError, match="Worker subclass"):
        RayPlacement().worker_class(int)
    with pytest.raises(TypeError, match="placement must be a RayPlacement"):
        Pool.start_link(Shop, placement="ray")
    with pytest.raises(TypeError, match="placement must be a RayPlacement"):
        Pool.child_spec(Shop, placement=object())


def test_the_stand_in_has_the_workers_commands_and_room_to_connect():
    pytest.importorskip("ray")
    placement = RayPlacement(address="10.0.0.1:6379", resources={"CPU": 2, "GPU": 1, "disk": 3})
    stand_in = placement.worker_class(Shop)
    assert issubclass(stand_in, Worker) and stand_in.__qualname__ == "Shop@ray"
    commands = stand_in.commands()
    assert {k: v for k, v in commands.items() if k in Shop.commands()} == Shop.commands()
    assert "otpy_pool.function" in commands  # the executor's functions are forwarded too
    assert stand_in.init_timeout == Shop.init_timeout + CONNECT_MARGIN
    worker, address, options, runtime_env = stand_in._ray_target
    assert (worker, address, runtime_env) == (Shop, "10.0.0.1:6379", None)
    assert options == {"num_cpus": 2, "num_gpus": 1, "resources": {"disk": 3}}


def test_the_actor_keeps_each_session_by_generation_and_drops_it_when_told():
    host = _Host()
    host.user = Shop()
    run = host.run
    assert run(("a", 1, True, "add", ("x",), {})) == ("ok", 1)
    assert run(("a", 1, False, "add", ("y",), {})) == ("ok", 2)
    assert run(("b", 2, True, "items", (), {})) == ("ok", [])  # sessions do not share state
    assert run(("a", 3, True, "items", (), {})) == ("ok", [])  # bound again: starts afresh
    host.end("a", 1)  # a late end of the old binding leaves the new one
    assert set(host.sessions) == {"a", "b"}
    host.end("a", 3)
    assert set(host.sessions) == {"b"}
    assert run((None, 0, False, "add", ("z",), {})) == ("ok", 1)  # no session: nothing kept
    assert set(host.sessions) == {"b"}
    kind, *_ = run(("b", 2, False, "missing", (), {}))
    assert kind == "error"


def test_an_async_worker_gets_an_async_stand_in_and_actor_with_its_concurrency():
    pytest.importorskip("ray")

    class Fetcher(Worker):
        max_concurrency = 4
        cancel_grace = 0.25

        @command
        async def fetch(self, session, url):
            return url

    for given, slots in ((None, 4), (7, 7)):  # the class's, or the pool's option
        stand_in = RayPlacement().worker_class(Fetcher, given)
        assert stand_in.is_async() and inspect.iscoroutinefunction(stand_in.fetch)
        assert (stand_in.max_concurrency, stand_in.cancel_grace) == (slots, 0.25)
        assert stand_in._ray_target[2]["max_concurrency"] == slots + 1  # and a health check
    assert not RayPlacement().worker_class(Shop).is_async()


def test_the_async_actor_awaits_commands_keeps_sessions_and_is_cancellable():
    class Pages(Worker):
        async def init(self):
            self.started = asyncio.Event()

        @command(replay=True)
        async def add(self, session, item):
            session.state.setdefault("items", []).append(item)
            return len(session.state["items"])

        @command
        def items(self, session):
            return session.state.get("items", [])

        @command
        async def wait(self, session):
            self.started.set()
            await asyncio.sleep(3600)

    async def scenario():
        host = _AsyncHost()
        host.user = Pages()
        await host.user.init()
        assert await host.run(("a", 1, True, "add", ("x",), {})) == ("ok", 1)
        assert await host.run(("a", 1, False, "add", ("y",), {})) == ("ok", 2)
        assert await host.run(("a", 1, False, "items", (), {})) == ("ok", ["x", "y"])
        assert (await host.run(("a", 1, False, "missing", (), {})))[0] == "error"
        waiting = asyncio.ensure_future(host.run(("b", 2, True, "wait", (), {})))
        await host.user.started.wait()
        waiting.cancel()  # as ray.cancel does to an async actor's task
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await host.end("a", 1)
        assert set(host.sessions) == {"b"}

    asyncio.run(scenario())
