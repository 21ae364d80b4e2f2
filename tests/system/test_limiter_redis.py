"""RateLimiter with storage="redis://...": the limits library's Redis storage,
against a real redis-server this module starts on a free loopback port (in
a temporary directory) and stops at the end. Skipped, saying why, where
redis-server or the limits library is not installed."""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import otpy
from otpy_pool import RateLimited, RateLimiter

import helpers
from helpers import DEADLINE, expect

REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed "
                       "(.ci/run installs it with apt-get)"),
    pytest.mark.skipif(importlib.util.find_spec("limits") is None
                       or importlib.util.find_spec("redis") is None,
                       reason="the limits library with Redis support is not installed "
                       "(pip install 'otpy[redis]')"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url():
    """A redis-server of our own; ready when it says so on its stdout."""
    with tempfile.TemporaryDirectory(prefix="otpy-redis-") as directory:
        port = _free_port()
        server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_ready(server, port)
            yield f"redis://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            server.stdout.close()


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + DEADLINE
    seen = b""
    fd = server.stdout.fileno()
    while b"Ready to accept connections" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or server.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} did not start: {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 65536)


def start(url, name="api", **options):
    helpers.CURRENT_TREE.start_child(RateLimiter.child_spec(name, storage=url, **options))
    return RateLimiter(name)


@pytest.fixture(params=["fixed_window", "sliding_window"])
def api(request, redis_url):
    # a name per test: the Redis keys of one test are not another's
    name = "api-" + request.node.name.replace("[", "-").strip("]")
    handle = start(redis_url, name=name, algorithm=request.param)
    yield handle
    handle.reset("k")


def test_allows_up_to_the_limit_then_denies_with_a_retry_time(api):
    for n in range(1, 4):
        d = api.hit("k", limit=3, window=60)
        assert (d.allowed, d.count, d.remaining, d.retry_after) == (True, n, 3 - n, 0.0)
    d = api.hit("k", limit=3, window=60)
    assert (d.allowed, d.count, d.remaining) == (False, 3, 0)
    assert 0 < d.retry_after <= 60
    with pytest.raises(RateLimited):
        with api.limit("k", limit=3, window=60):
            pass


def test_costs_inspect_and_reset(api):
    assert api.hit("k", limit=10, window=60, cost=7).count == 7
    assert not api.hit("k", limit=10, window=60, cost=4).allowed
    assert api.hit("k", limit=10, window=60, cost=3).allowed
    assert api.inspect("k", limit=10, window=60).count == 10
    api.hit("k", limit=5, window=30)
    assert api.reset("k") == 2
    assert api.hit("k", limit=10, window=60).count == 1


def test_keys_that_differ_as_python_values_are_different_buckets(api):
    keys = [1, "1", b"1", (1,), "x" * 10_000, "ключ 🔑"]
    for key in keys:
        assert api.hit(key, limit=1, window=60).allowed, key
    for key in keys:
        assert not api.hit(key, limit=1, window=60).allowed, key
        api.reset(key)


def test_a_window_must_be_whole_seconds(api):
    with pytest.raises(ValueError, match="whole number of seconds"):
        api.hit("k", limit=1, window=0.5)


def _hammer(parent, name, hits):
    limiter = RateLimiter(name)
    otpy.send(parent, "ready")
    otpy.receive(match=lambda m: m == "go")
    otpy.send(parent, ("allowed", sum(limiter.hit("k", limit=50, window=3600).allowed
                                      for _ in range(hits))))


def test_processes_share_the_limit_through_redis(redis_url):
    api = start(redis_url, name="shared", algorithm="sliding_window")
    me = otpy.self()
    pids = [otpy.spawn(_hammer, me, "shared", 20) for _ in range(4)]
    for _ in pids:
        expect(lambda m: m == "ready")
    for pid in pids:
        otpy.send(pid, "go")
    assert sum(expect(lambda m: m[:1] == ("allowed",))[1] for _ in pids) == 50
    api.reset("k")


def test_token_bucket_with_redis_is_refused_at_start(redis_url):
    with pytest.raises(ValueError, match="token_bucket"):
        RateLimiter.start_link("api", storage=redis_url, algorithm="token_bucket")


def test_an_unreachable_redis_fails_the_start():
    with pytest.raises(otpy.StartError, match="not reachable"):
        RateLimiter.start_link("api", storage=f"redis://127.0.0.1:{_free_port()}")


def test_ahit_on_redis_shares_the_buckets(api):
    import asyncio

    async def hits():
        return [await api.ahit("k", limit=2, window=60) for _ in range(3)]

    decisions = asyncio.run(asyncio.wait_for(hits(), 10))
    assert [d.allowed for d in decisions] == [True, True, False]
    assert not api.hit("k", limit=2, window=60).allowed
