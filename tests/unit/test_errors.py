"""Every error otpy raises derives from otpy.OtpyError (keeping its standard bases)."""

from __future__ import annotations

import inspect

import otpy
import otpy.observer
import otpy.testing


def _exported_exceptions() -> list[type]:
    found = []
    for module in (otpy, otpy.observer, otpy.testing):
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
