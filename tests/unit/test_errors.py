"""Every error otpy and otpy_pool raise derives from otpy.OtpyError (keeping
its standard bases); otpy_pool's are one hierarchy under PoolError."""

from __future__ import annotations

import inspect
import pickle

import pytest

import otpy
import otpy.observer
import otpy.testing
import otpy_pool
import otpy_pool.testing


def _exported_exceptions(*modules) -> list[type]:
    found = []
    for module in modules or (otpy, otpy.observer, otpy.testing, otpy_pool, otpy_pool.testing):
        for name in getattr(module, "__all__", dir(module)):
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException):
                found.append(value)
    return found


def test_every_exported_error_is_an_otpy_error() -> None:
    errors = _exported_exceptions()
    assert otpy.RemoteError in errors and otpy.observer.ObserverError in errors
    # ProcessExit is not an error: it is how a process exits, and must not be
    # caught by ``except Exception`` (a BaseException, as Erlang's exit/1).
    offenders = [e.__name__ for e in errors
                 if e is not otpy.ProcessExit and not issubclass(e, otpy.OtpyError)]
    assert offenders == []


def test_standard_bases_are_kept() -> None:
    assert issubclass(otpy.Timeout, TimeoutError)
    assert issubclass(otpy.SerializationError, TypeError)
    assert issubclass(otpy.ChildNotFound, LookupError)
    assert issubclass(otpy.observer.NodeNotFound, LookupError)
    assert issubclass(otpy.observer.ObserverError, RuntimeError)


# ---- otpy_pool: one hierarchy ----------------------------------------------------------

POOL_ERRORS = _exported_exceptions(otpy_pool, otpy_pool.testing)


def test_every_otpy_pool_error_is_a_pool_error():
    assert otpy_pool.CircuitOpen in POOL_ERRORS and otpy_pool.DeadlineExceeded in POOL_ERRORS
    assert [e.__name__ for e in POOL_ERRORS if not issubclass(e, otpy_pool.PoolError)] == []
    assert issubclass(otpy_pool.PoolError, otpy.OtpyError)


def test_what_a_protected_call_raises_has_one_base():
    """``except PoolError`` around Protected.execute catches the chain's errors."""
    for error in (otpy_pool.CircuitOpen, otpy_pool.RateLimited, otpy_pool.DeadlineExceeded,
                  otpy_pool.LimiterBusy, otpy_pool.BreakerNotRunning,
                  otpy_pool.LimiterNotRunning, otpy_pool.WorkerCrashed,
                  otpy_pool.CommandTimeout, otpy_pool.PoolTimeout, otpy_pool.PoolOverloaded,
                  otpy_pool.PoolUnavailable, otpy_pool.SessionLost):
        assert issubclass(error, otpy_pool.PoolError), error


def test_every_timeout_is_an_otpy_timeout():
    timeouts = [e for e in POOL_ERRORS if issubclass(e, TimeoutError)]
    assert {e.__name__ for e in timeouts} == {
        "PoolTimeout", "CommandTimeout", "DeadlineExceeded", "LimiterBusy", "BreakerTimeout",
        "LimiterTimeout"}
    assert [e.__name__ for e in timeouts if not issubclass(e, otpy.Timeout)] == []


def test_not_running_is_one_type_family_wide():
    for error in (otpy_pool.BreakerNotRunning, otpy_pool.LimiterNotRunning,
                  otpy_pool.BreakerTimeout, otpy_pool.LimiterTimeout):
        assert issubclass(error, otpy_pool.PoolNotRunning), error
    assert issubclass(otpy_pool.PoolNotRunning, LookupError)
    # the families keep their own bases too
    assert issubclass(otpy_pool.BreakerNotRunning, otpy_pool.BreakerError)
    assert issubclass(otpy_pool.LimiterNotRunning, otpy_pool.LimiterError)
    # a slow owner is a timeout, and still the "not running" it always was
    assert issubclass(otpy_pool.BreakerTimeout, otpy_pool.BreakerNotRunning)


def test_otpy_pool_keeps_its_standard_bases():
    assert issubclass(otpy_pool.SessionNotFound, LookupError)
    assert issubclass(otpy_pool.UnknownCommand, LookupError)
    assert issubclass(otpy_pool.LimiterBusy, TimeoutError)
    assert issubclass(otpy_pool.testing.UnexpectedCommand, AssertionError)


@pytest.mark.parametrize("error", [
    otpy_pool.CircuitOpen("db", 1.5), otpy_pool.CircuitOpen("db", None),
    otpy_pool.RateLimited(0.25), otpy_pool.WorkerCrashed(("signal", "SIGKILL")),
    otpy_pool.SessionLost("s1", ValueError("x")), otpy_pool.PoolUnavailable(KeyError("k")),
    otpy_pool.DeadlineExceeded("late"), otpy_pool.BreakerTimeout("slow"),
    otpy_pool.LimiterBusy("held"), otpy_pool.PoolNotRunning("gone"),
], ids=lambda e: type(e).__name__)
def test_otpy_pool_errors_cross_processes_whole(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert repr(vars(copy)) == repr(vars(error))  # the attributes (exceptions compare by identity)
