"""What the breaker and the limiter share (``_shared_owner``,
``_shared_handle``): a handle is a name that pickles and compares as one, a
forked child never uses its parent's connection, an owner answers an unknown
request with an error, a taken name is AlreadyStarted, and stop() ends the
part and lets its connection go."""

from __future__ import annotations

import math
import os
import pickle
import warnings

import pytest

import otpy
from otpy import lowlevel
from otpy_pool import CircuitBreaker, RateLimiter
from otpy_pool import _shared_handle

import helpers
from helpers import expect

PARTS = [pytest.param(CircuitBreaker, {}, id="breaker"),
         pytest.param(RateLimiter, {"algorithm": "fixed_window"}, id="limiter-shared"),
         pytest.param(RateLimiter, {"algorithm": "sliding_window"}, id="limiter-called")]


def use(handle):
    """One use that connects this process to the owner."""
    if isinstance(handle, CircuitBreaker):
        return handle.call(lambda: "ran")
    return handle.hit("k", limit=10, window=60.0).allowed


def test_a_handle_is_its_kind_name_namespace_and_timeout():
    for handle in (CircuitBreaker("x", timeout=math.inf), RateLimiter("x", namespace="ns")):
        copy = pickle.loads(pickle.dumps(handle))
        assert type(copy) is type(handle) and copy == handle and hash(copy) == hash(handle)
        assert (copy.name, copy.namespace, copy.timeout) == \
            (handle.name, handle.namespace, handle.timeout)
    assert CircuitBreaker("x").timeout == 5.0 and CircuitBreaker("x", timeout=None).timeout \
        == math.inf
    assert CircuitBreaker("x") != RateLimiter("x")  # same name, different parts
    assert CircuitBreaker("x") != CircuitBreaker("x", namespace="other")
    assert repr(RateLimiter("x")) == "<RateLimiter 'x'>"


@pytest.mark.parametrize("cls, options", PARTS)
def test_an_owner_answers_an_unknown_request_with_an_error(cls, options):
    helpers.CURRENT_TREE.start_child(cls.child_spec("part", **options))
    with pytest.raises(ValueError, match="has no operation 'nonsense'"):
        lowlevel.ask("part", ("nonsense", 1))
    with pytest.raises(ValueError, match="has no operation"):
        cls("part")._ask("nonsense")
    assert use(cls("part"))  # the owner serves on


@pytest.mark.parametrize("cls, options", PARTS)
def test_a_taken_name_is_already_started(cls, options):
    first = cls.start_link("part", **options)
    try:
        with pytest.raises(otpy.AlreadyStarted):
            cls.start_link("part", **options)
    finally:
        first.stop()
    otpy.register("taken", otpy.self())
    try:
        with pytest.raises(otpy.AlreadyStarted) as info:
            cls.start_link("taken", **options)
        assert info.value.pid == otpy.self()
    finally:
        otpy.unregister("taken")


@pytest.mark.parametrize("cls, options", PARTS)
def test_stop_ends_the_part_and_lets_its_connection_go(cls, options):
    handle = cls.start_link("part", **options)
    assert use(handle)
    conn = handle._conn
    handle.stop()
    assert conn.dead and handle._conn.dead and otpy.whereis("part") is None
    assert handle._key() not in _shared_handle._CONNECTIONS
    again = cls.start_link("part", **options)  # a new one of that name: connected afresh
    try:
        assert use(handle)
        assert handle._conn is not conn
    finally:
        again.stop()


def _fork_and_look(parent, db, api):
    """Connect, fork, and report what the child sees of the connections."""
    use(db), use(api)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
        child = os.fork()
    if child == 0:
        seen = (db._conn.dead, db._conn.words[1], api._conn.dead,
                len(_shared_handle._CONNECTIONS))
        os.write(write, repr(seen).encode())
        os._exit(0)
    os.close(write)
    seen = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(child, 0)
    otpy.send(parent, ("seen", seen, db._conn.dead, api._conn.dead, use(db), use(api)))


def test_a_forked_child_never_uses_its_parents_connection():
    helpers.CURRENT_TREE.start_child(CircuitBreaker.child_spec("db"))
    helpers.CURRENT_TREE.start_child(RateLimiter.child_spec("api"))
    otpy.spawn(_fork_and_look, otpy.self(), CircuitBreaker("db"), RateLimiter("api"))
    _, seen, db_dead, api_dead, *used = expect(lambda m: m[:1] == ("seen",))
    # the child: both connections dead, the breaker's gate word says "slow path"
    # (a closed call would go to the owner for a slot of its own), nothing cached
    assert seen == "(True, 1, True, 0)"
    assert (db_dead, api_dead, used) == (False, False, ["ran", True])  # the parent's serve on
