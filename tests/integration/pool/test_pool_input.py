"""Input that is checked before anything runs (issue 22, item 5): a bad
entry of a batch, a session id that could never be found, a command that
takes one of execute's own keywords, a misspelt recovery class, a limit
past the documented bound, a breaker on an async or generator function, a
second pool under a taken name. Each is refused at once, naming the
problem, and nothing ran."""

from __future__ import annotations

import math

import otpy
import pytest
from otpy_pool import (ERROR_CLASSES, STRATEGIES, CircuitBreaker, Policy, Pool, RateLimiter,
                       Recovery, Worker, command)

from helpers import expect
from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers


def test_one_unsendable_entry_of_a_batch_stops_it_before_any_is_sent():
    me = otpy.self()
    pool = Pool.start_link(Notes, size=1)
    for session in ("s", None):
        calls = [(me, "first"), (me, (n for n in ())), (me, "third")]
        with pytest.raises(otpy.SerializationError, match="call 1 .*generator.*nothing was sent"):
            pool.execute_many("ran", calls, session=session)
        with pytest.raises(otpy.SerializationError, match="call 0"):
            pool.execute_many("add", [((n for n in ()),), ("x",)], session=session)
    assert pool.status().total_commands == 0 and pool.status().sessions == 0
    assert pool.execute_many("ran", [(me, "only")], session="s") == ["only"]
    assert expect(lambda m: m[:1] == ("ran",)) == ("ran", "only")  # the first message of "ran"
    assert pool.execute_many("echo", [(lambda: 1,)])[0][0][0]() == 1  # dill carries lambdas
    pool.stop()


@pytest.mark.parametrize("sid, error, text", [
    (math.nan, ValueError, "equal a copy of itself"),
    (object(), ValueError, "equal a copy of itself"),
    ((1, math.nan), ValueError, "equal a copy of itself"),
    ([1], TypeError, "hashable"),
    (lambda: 1, TypeError, "picklable")])
def test_a_session_id_that_could_never_be_found_is_refused_at_once(sid, error, text):
    pool = Pool.start_link(Notes, size=1)
    with pytest.raises(error, match=text):
        pool.execute("ping", session=sid)
    with pytest.raises(error, match=text):
        pool.execute_many("ping", [()], session=sid)
    assert pool.status().sessions == 0 and pool.status().total_commands == 0
    for good in ("s", 7, b"b", (1, "x"), 2.5, None):
        pool.execute("ping", session=good)
    pool.stop()


@pytest.mark.parametrize("reserved", ["session", "timeout", "checkout_timeout"])
def test_a_command_taking_one_of_executes_keywords_fails_at_class_definition(reserved):
    with pytest.raises(TypeError, match=f"Bad.run: parameter '{reserved}'"):
        exec(f"class Bad(Worker):\n"
             f"    @command\n"
             f"    def run(self, s, x, {reserved}=None):\n"
             f"        pass\n", {"Worker": Worker, "command": command})
    with pytest.raises(TypeError, match=reserved):
        exec(f"class Bad(Worker):\n"
             f"    @command(replay=True)\n"
             f"    def run(self, s, *, {reserved}):\n"
             f"        pass\n", {"Worker": Worker, "command": command})

    class Fine(Worker):  # the Session parameter may be called session; ** and positional-only too
        @command
        def run(self, session, x, /, timeout_s=1, **rest):
            return x

        def helper(self, timeout):  # not a command
            return timeout


def test_a_command_that_takes_no_session_fails_at_class_definition():
    # (it failed at every call, with a TypeError that never named the Session)
    with pytest.raises(TypeError, match=r"Bad.ping: a command takes the Session after self"):
        class Bad(Worker):
            @command
            def ping(self):
                return "pong"

    class Fine(Worker):  # the Session may come in *args
        @command
        def ping(self, *args):
            return "pong"


def test_policies_keyed_by_an_unknown_class_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="'wroker_crashed'.*worker_crashed, timeout"):
        Recovery.start_link("r", {"wroker_crashed": Policy(retries=1)})
    with pytest.raises(ValueError, match="'db_down'.*classes="):
        Recovery.child_spec("r", {"db_down": Policy()}, classifier=lambda exc: "db_down")
    spec = Recovery.child_spec("r", {"db_down": Policy()}, classifier=lambda exc: "db_down",
                               classes=["db_down"])
    assert spec.id == "r"
    assert "worker_crashed" in ERROR_CLASSES and "unavailable" in ERROR_CLASSES
    assert STRATEGIES == ("lifo", "fifo")


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_every_algorithm_checks_the_same_documented_bound(algorithm):
    limiter = RateLimiter.start_link("big", algorithm=algorithm)
    for option in ("limit", "cost"):
        args = {"limit": 10, "cost": 1, option: 10 ** 30}
        with pytest.raises(ValueError, match=f"{option} must be between 1 and 2\\*\\*62"):
            limiter.hit("k", window=60.0, **args)
    top = RateLimiter.MAX_LIMIT  # counted exactly, up to the bound
    decision = limiter.hit("k", limit=top, window=600.0, cost=top - 1)
    assert decision.allowed and decision.count == top - 1 and decision.remaining == 1
    limiter.stop()


def test_a_breaker_refuses_a_generator_function():
    """A generator's work runs after the call returns: refused, naming it.
    (An async def is guarded on its awaited outcome: test_breaker.py.)"""
    breaker = CircuitBreaker.start_link("guard")

    def rows():
        yield 1

    async def stream():
        yield 1

    for fn in (rows, stream):
        with pytest.raises(TypeError, match=f"cannot guard .*{fn.__name__}"):
            breaker(fn)
    assert breaker.stats()["calls"] == 0
    breaker.stop()


def test_a_second_pool_under_a_taken_name_is_refused_naming_it():
    pool = Pool.start_link(Notes, size=1, name="x")
    before = otpy.processes()
    with pytest.raises(otpy.AlreadyStarted, match="'x' is already registered") as info:
        Pool.start_link(Notes, size=1, name="x")
    assert ".workers" not in str(info.value) and info.value.name == "x"
    app = otpy.Supervisor.start_link([])
    with pytest.raises(otpy.StartError, match="'x' is already registered"):
        otpy.Supervisor.start_child(app, Pool.child_spec(Notes, size=1, name="x"))
    otpy.Supervisor.stop(app)
    assert otpy.processes() == before
    pool.stop()
