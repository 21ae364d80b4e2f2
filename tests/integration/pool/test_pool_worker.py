"""The worker (otpy_pool._worker): a command's error reaches the caller as
itself, only commands run, unpicklable arguments are never sent, commands are
inherited; the pool's errors. (Moved from test_pool.py.)"""

from __future__ import annotations

import pickle
import traceback

import otpy
import pytest
from otpy_pool import (CommandTimeout, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable,
                       SessionLost, SessionNotFound, UnknownCommand, WorkerCrashed)

from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


def test_a_command_error_reaches_the_caller_as_itself_with_its_remote_traceback():
    pool = start(size=1)
    pool.execute("add", "kept", session="s")
    worker = pool.workers()[0]
    with pytest.raises(KeyError) as info:
        pool.execute("fail", "missing", session="s")
    text = "".join(traceback.format_exception(info.value))
    assert "pool_workers.py" in text and "in fail" in text
    assert pool.workers() == [worker]  # the worker and its sessions carry on
    assert pool.execute("notes", session="s") == ["kept"]
    assert pool.status().errors == 1
    pool.stop()


def test_only_commands_can_be_executed():
    pool = start(size=1)
    for name in ("not_a_command", "init", "health_check", "nope"):
        with pytest.raises(UnknownCommand, match=name):
            pool.execute(name)
    with pytest.raises(TypeError, match="command"):
        pool.execute(42)
    with pytest.raises(ValueError, match="timeout"):
        pool.execute("ping", timeout=0)
    with pytest.raises(TypeError, match="timeout"):
        pool.execute("ping", session="s", timeout="5")
    with pytest.raises(TypeError, match="session id must be hashable"):
        pool.execute("ping", session=["s"])
    with pool.checkout() as w:
        with pytest.raises(ValueError, match="timeout"):
            w.execute("ping", timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        with pool.checkout(timeout="soon"):
            pass
    assert pool.execute("ping") == ("pong", "notes", None)
    pool.stop()


def test_unpicklable_arguments_fail_in_the_caller_and_nothing_is_sent():
    pool = start(size=1)
    pool.execute("ping", session="s")
    before = pool.status().total_commands
    with pytest.raises(otpy.SerializationError):
        pool.execute("echo", (n for n in ()), session="s")
    with pytest.raises(otpy.SerializationError):
        pool.execute("echo", (n for n in ()))
    with pytest.raises(otpy.SerializationError, match="cannot be sent"):
        pool.execute("unpicklable_result")
    assert pool.status().total_commands == before + 1  # only the last one ran
    assert pool.status().errors == 1  # and it ended in an error: its result never came back
    assert pool.status().busy == 0
    pool.stop()


def test_errors_are_otpy_errors():
    for cls in (PoolTimeout, CommandTimeout, PoolOverloaded, PoolUnavailable, WorkerCrashed,
                SessionLost, SessionNotFound, UnknownCommand):
        assert issubclass(cls, PoolError)
    assert issubclass(PoolError, otpy.OtpyError)
    assert issubclass(PoolTimeout, otpy.Timeout) and issubclass(CommandTimeout, otpy.Timeout)
    crashed = pickle.loads(pickle.dumps(WorkerCrashed("killed")))
    assert crashed.reason == "killed" and "killed" in str(crashed)
    lost = pickle.loads(pickle.dumps(SessionLost("s", "cause")))
    assert (lost.session, lost.cause) == ("s", "cause")
    unavailable = pickle.loads(pickle.dumps(PoolUnavailable(KeyError("k"), "none")))
    assert isinstance(unavailable.cause, KeyError) and str(unavailable) == "none"


def test_commands_are_inherited_and_a_redefinition_without_the_mark_is_not_one():
    from otpy_pool import Worker, command

    class Base(Worker):
        @command(replay=True)
        def a(self, session):
            pass

        @command
        def b(self, session):
            pass

    class Derived(Base):
        def b(self, session):  # no longer a command
            pass

        @command
        def c(self, session):
            pass

    assert Derived.commands() == {"a": True, "c": False}
    with pytest.raises(TypeError, match="replay"):
        command(replay="yes")
