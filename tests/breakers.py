"""Helpers of the circuit breaker's tests (test_breaker.py, test_breaker_owner.py)."""

from __future__ import annotations

import os
import signal

import pytest

import otpy
from otpy.testing import wait_for
from otpy_pool import BreakerEvent, CircuitBreaker, CircuitOpen

import helpers
from helpers import DEADLINE, expect, expect_down


class Boom(Exception):
    pass


class Harmless(Exception):
    pass


def start(name, **options):
    """A breaker under the test's tree (stopped with it)."""
    helpers.CURRENT_TREE.start_child(CircuitBreaker.child_spec(name, **options))
    return CircuitBreaker(name)


def until(attempt, deadline=DEADLINE):
    """attempt() until it stops raising CircuitOpen; its result."""
    def tried():
        try:
            return (attempt(),)
        except CircuitOpen:
            return None
    return wait_for(tried, timeout=deadline)[0]


def boom(*_args):
    raise Boom("down")


def fail(db, times=1):
    for _ in range(times):
        with pytest.raises(Boom):
            db.call(boom)


def event(state=None):
    return expect(lambda m: isinstance(m, BreakerEvent) and (state is None or m.state == state))


def no_event():
    with pytest.raises(otpy.Timeout):
        otpy.receive(timeout=0, match=lambda m: isinstance(m, BreakerEvent))


def owner_pid(name):
    return otpy.whereis(name)


def kill_owner(name):
    pid = owner_pid(name)
    ref = otpy.monitor(pid)
    os.kill(pid.os_pid, signal.SIGKILL)
    expect_down(ref)
    return pid
