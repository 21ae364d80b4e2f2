"""Testing an otpy application with pytest: run it as ``pytest
examples/test_with_otpy.py`` (otpy's pytest plugin comes with otpy).

- ``otpy_tree``: each test gets a fresh supervision tree whose names are
  private to it; what the test starts under it is stopped at its end, and
  a process the test leaked fails it.
- ``wait_for`` waits for a condition (never a sleep), with a deadline.
- ``inject_failure`` injects real faults (SIGKILL, hang, ...), undone when
  the test ends.
- layers: ``@pytest.mark.layer("mock" | "bridge" | "full")`` says how much
  of the real system a test needs; ``pytest --otpy-layer mock`` runs only
  what needs no worker process.
"""

from __future__ import annotations

import pytest

import otpy
from otpy.testing import inject_failure, wait_for
from otpy_pool import Worker, command
from otpy_pool.testing import Fail, Reply, start_pool


class Counter(otpy.GenServer):
    def init(self) -> None:
        self.count = 0

    def handle_call(self, request, caller):
        self.count += 1
        return self.count


def test_a_killed_child_is_restarted_fresh(otpy_tree):
    otpy_tree.start_child(Counter.child_spec(name="counter"))
    assert otpy.call("counter", "add") == 1
    old = otpy.whereis("counter")
    inject_failure("crash", "counter")  # SIGKILL
    # the name comes back once the supervisor has restarted it
    new = wait_for(lambda: otpy.whereis("counter") not in (None, old) and otpy.whereis("counter"))
    assert new != old
    assert otpy.call("counter", "add") == 1  # a fresh state


def test_a_hung_server_times_its_callers_out(otpy_tree):
    otpy_tree.start_child(Counter.child_spec(name="counter"))
    hang = inject_failure("hang", "counter")  # SIGSTOP
    with pytest.raises(otpy.Timeout):
        otpy.call("counter", "add", timeout=0.2)
    hang.heal()  # SIGCONT (also done at the end of the test)
    assert otpy.call("counter", "add") >= 1


class Pricing(Worker):
    @command
    def quote(self, session, item):
        return {"tea": 3}[item]


@pytest.mark.layer("mock")
def test_the_command_logic_inline(otpy_tree):
    pool = start_pool(otpy_tree, Pricing)  # runs Pricing in this process
    assert pool.execute("quote", "tea") == 3


@pytest.mark.layer("bridge")
def test_a_caller_against_scripted_workers(otpy_tree):
    # real worker processes, scripted: fail once, then answer
    pool = start_pool(otpy_tree, Pricing, script={"quote": [Fail(LookupError("no tea")),
                                                            Reply(3)]}, size=1)
    with pytest.raises(LookupError):
        pool.execute("quote", "tea")
    assert pool.execute("quote", "tea") == 3


@pytest.mark.layer("full")
def test_the_real_workers(otpy_tree):
    pool = start_pool(otpy_tree, Pricing, size=2)
    assert pool.execute("quote", "tea") == 3
