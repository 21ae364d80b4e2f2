"""The pool's layer pieces: InlinePool ("mock"), MockWorker ("bridge"), start_pool."""

from __future__ import annotations

import pytest
from pool_workers import Notes

import otpy
from otpy.testing import ensure_pool_ready, isolated_tree, wait_down, wait_event
from otpy_pool import CommandTimeout, Pool, SessionNotFound, UnknownCommand, WorkerCrashed
from otpy_pool.testing import (Crash, Delay, Fail, InlinePool, MockWorker, Reply,
                               UnexpectedCommand, check_script, start_pool)

DEADLINE = 10.0


def mock_pool(tree, script, size=1, **options) -> Pool:
    tree.start_child(Pool.child_spec(MockWorker, kwargs=dict(script=script, **options.pop(
        "worker", {})), name="pool", size=size, **options))
    pool = Pool("pool")
    ensure_pool_ready(pool, size)
    return pool


# ---- MockWorker: the bridge layer -----------------------------------------------------------

@pytest.mark.layer("bridge")
def test_a_mock_worker_replies_as_scripted_in_turn(otpy_tree):
    pool = mock_pool(otpy_tree, {"run": Reply("ok"), "load": [Reply(1), Fail(OSError("disk")),
                                                               Reply(2)],
                                 "add": lambda session, x: x + 1})
    assert pool.execute("run") == "ok"
    assert pool.execute("load") == 1
    with pytest.raises(OSError, match="disk"):
        pool.execute("load")
    assert [pool.execute("load") for _ in range(2)] == [2, 2]  # the last step repeats
    assert pool.execute("add", 41) == 42
    with pytest.raises(UnknownCommand, match="'nope'"):
        pool.execute("nope")
    assert pool.execute("mock_history") == [("run", ()), ("load", ()), ("load", ()),
                                            ("load", ()), ("load", ()), ("add", (41,))]


@pytest.mark.layer("bridge")
def test_a_mock_worker_crash_is_real(otpy_tree):
    pool = mock_pool(otpy_tree, {"die": Crash(3), "run": Reply("ok")})
    worker = pool.workers()[0]
    with pytest.raises(WorkerCrashed):
        pool.execute("die")
    assert wait_down(worker, DEADLINE) in (("exit", 3), "noproc")
    ensure_pool_ready(pool, 1)
    assert pool.execute("run") == "ok"


@pytest.mark.layer("bridge")
def test_a_mock_worker_delay_meets_the_pools_command_timeout(otpy_tree):
    pool = mock_pool(otpy_tree, {"slow": Delay(30, Reply("late")), "run": Reply("ok")},
                     command_timeout=0.2)
    with pytest.raises(CommandTimeout):
        pool.execute("slow")
    ensure_pool_ready(pool, 1)
    assert pool.execute("run") == "ok"


@pytest.mark.layer("bridge")
def test_a_mock_worker_checks_the_commands_it_expects(otpy_tree):
    pool = mock_pool(otpy_tree, {"a": Reply(1), "b": Reply(2)},
                     worker={"expect": ["a", "b"]})
    assert pool.execute("a") == 1
    with pytest.raises(UnexpectedCommand, match="expected 'b', got 'a'"):
        pool.execute("a")


@pytest.mark.layer("bridge")
def test_a_mock_workers_scripted_health_fails_and_it_is_replaced(otpy_tree):
    pool = mock_pool(otpy_tree, {"run": Reply("ok")}, worker={"health": [True, False, True]},
                     health_interval=0.05)
    pool.subscribe()
    event = wait_event(pool, "health_failed", DEADLINE)
    assert event.worker is not None
    ensure_pool_ready(pool, 1)
    assert pool.execute("run") == "ok"


@pytest.mark.layer("bridge")
def test_a_bad_script_is_refused_naming_the_command(otpy_tree):
    with pytest.raises(otpy.StartError, match="a step is Reply, Fail, Delay, Crash or a function, "
                                              "not 42"):
        mock_pool(otpy_tree, {"x": 42})
    with pytest.raises(TypeError, match="script 'x'"):
        check_script({"x": 42})
    with pytest.raises(ValueError, match="script 'y': Delay needs seconds >= 0"):
        check_script({"y": [Reply(), Delay(-1)]})


# ---- InlinePool: the mock layer -----------------------------------------------------------------

@pytest.mark.layer("mock")
def test_an_inline_pool_runs_commands_and_sessions_in_this_process():
    before = set(otpy.processes())
    pool = InlinePool(Notes, kwargs={"tag": "inline"})
    assert pool.execute("ping") == ("pong", "inline", None)
    assert pool.execute("add", "a", session="s") == 1
    assert pool.execute("add", "b", session="s") == 2
    assert pool.execute("notes", session="s") == ["a", "b"]
    with pytest.raises(KeyError):
        pool.execute("fail", "x")
    with pytest.raises(UnknownCommand):
        pool.execute("nope")
    with pool.session("t") as t:
        assert t.execute("add", "z") == 1
    pool.end_session("s")
    with pytest.raises(SessionNotFound):
        pool.end_session("s")
    status = pool.status()
    assert (status.total_commands, status.errors, status.sessions) == (7, 2, 0)
    assert pool.workers() == [] and set(otpy.processes()) == before  # no process at all


@pytest.mark.layer("mock")
def test_an_inline_mock_worker_crash_raises_worker_crashed():
    pool = InlinePool(MockWorker, kwargs={"script": {"die": Crash(), "run": Reply(1)}})
    with pytest.raises(WorkerCrashed):
        pool.execute("die")
    assert pool.execute("run") == 1


# ---- start_pool by layer ------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["mock", "bridge", "full"])
def test_start_pool_builds_the_layer_the_tree_asks_for(layer):
    script = {"ping": Reply(("pong", "scripted", None))}
    with isolated_tree("layered", layer=layer) as tree:
        pool = start_pool(tree, Notes, script=script, size=1)
        expected = {"mock": ("pong", "notes", None), "bridge": ("pong", "scripted", None),
                    "full": ("pong", "notes", None)}[layer]
        assert pool.execute("ping") == expected
        assert isinstance(pool, InlinePool) == (layer == "mock")
    with isolated_tree("layered", layer="bridge") as tree:
        with pytest.raises(ValueError, match="script="):
            start_pool(tree, Notes)
