"""otpy_pool's public API: one ``__all__``, every name in it imported from
``otpy_pool`` and saying so (``__module__``, as trio's do), so reprs,
tracebacks and pickles name the public path; every name that was public
before the package was reorganised (issue 23) still is."""

from __future__ import annotations

import pickle

import otpy_pool

#: the public names before issue 23, which users' code imports
BEFORE = ["Pool", "PoolStatus", "PoolEvent", "EVENT_KINDS", "STRATEGIES", "PoolExecutor",
          "CheckedOut", "BoundSession", "Worker", "command", "Session", "RESERVED",
          "PoolError", "PoolTimeout", "CommandTimeout", "PoolOverloaded", "PoolUnavailable",
          "WorkerCrashed", "SessionLost", "SessionNotFound", "UnknownCommand",
          "CircuitBreaker", "CircuitOpen", "BreakerEvent", "BreakerError", "BreakerNotRunning",
          "RateLimiter", "RateLimited", "Decision", "LimiterError", "LimiterNotRunning",
          "LimiterBusy", "Recovery", "Policy", "protect", "Protected", "classify", "ClassStats",
          "DeadlineExceeded", "ERROR_CLASSES"]


def test_every_earlier_public_name_is_still_public():
    assert [name for name in BEFORE if name not in otpy_pool.__all__] == []
    assert len(set(otpy_pool.__all__)) == len(otpy_pool.__all__)


def test_public_classes_and_functions_name_otpy_pool_as_their_module():
    private = {name: value.__module__ for name in otpy_pool.__all__
               if hasattr(value := getattr(otpy_pool, name), "__module__")
               and value.__module__ != "otpy_pool"}
    assert private == {}
    assert repr(otpy_pool.CircuitOpen) == "<class 'otpy_pool.CircuitOpen'>"


def test_they_pickle_by_their_public_path():
    for value in (otpy_pool.CircuitOpen, otpy_pool.protect, otpy_pool.Policy,
                  otpy_pool.CircuitOpen("db", 1.0), otpy_pool.Policy(retries=2),
                  otpy_pool.Decision(True, 1, 2, 0.0, 3.0)):
        data = pickle.dumps(value)
        assert b"otpy_pool._" not in data
        copy = pickle.loads(data)
        assert type(copy) is type(value) or copy is value
