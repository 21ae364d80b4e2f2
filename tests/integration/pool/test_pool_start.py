"""Starting a pool: its options checked before anything starts, their defaults,
init failures. (Moved from test_pool.py.)"""

from __future__ import annotations

import os

import otpy
import pytest
from otpy_pool import Pool

from pool_helpers import no_stale_events  # noqa: F401 (a fixture, by name)
from pool_workers import Notes, SlowInit

pytestmark = [pytest.mark.layer("full"),  # real pool workers
              pytest.mark.usefixtures("no_stale_events")]


@pytest.mark.parametrize("option, value, error", [
    ("size", 0, ValueError), ("size", "2", TypeError), ("max_overflow", -1, ValueError),
    ("overflow_idle", 0, ValueError), ("lazy", "yes", TypeError),
    ("strategy", "random", ValueError), ("checkout_timeout", -1, ValueError),
    ("max_queue", 1.5, TypeError), ("command_timeout", 0, ValueError),
    ("health_interval", "1", TypeError), ("health_timeout", 0, ValueError),
    ("max_commands", 0, ValueError), ("max_memory", True, TypeError), ("name", 3, TypeError),
])
def test_a_bad_option_is_named_before_anything_starts(option, value, error):
    before = otpy.processes()
    with pytest.raises(error, match=option):
        Pool.start_link(Notes, **{option: value})
    with pytest.raises(error, match=option):
        Pool.child_spec(Notes, **{option: value})
    assert otpy.processes() == before


def test_bad_worker_args_and_unknown_options():
    with pytest.raises(TypeError, match="Worker subclass"):
        Pool.start_link(dict)
    with pytest.raises(TypeError, match="args"):
        Pool.start_link(Notes, args="x")
    with pytest.raises(TypeError, match="kwargs"):
        Pool.start_link(Notes, kwargs=[1])
    with pytest.raises(TypeError, match="colour"):
        Pool.child_spec(Notes, colour="red")


def test_defaults():
    pool = Pool.start_link(Notes)
    status = pool.status()
    assert status.size == os.cpu_count() and status.workers == os.cpu_count()
    settings = pool._settings()
    assert (settings.command_timeout, settings.checkout_timeout) == (None, 5.0)
    pool.stop()


def test_start_link_raises_start_error_when_the_first_workers_cannot_start(otpy_tree):
    flag = os.path.join(otpy_tree.tmp_path, "refuse")
    open(flag, "w").close()
    with pytest.raises(otpy.StartError, match="init refused"):
        Pool.start_link(Notes, kwargs={"fail_if": flag}, size=1)
    assert otpy.whereis("otpy_pool") is None


def test_a_worker_init_is_bounded_by_its_class_init_timeout():
    with pytest.raises(otpy.StartError, match="did not finish init within 0.3s"):
        Pool.start_link(SlowInit, size=1)
    bad = type("BadTimeout", (Notes,), {"init_timeout": -1})
    with pytest.raises(ValueError, match="BadTimeout.init_timeout"):
        Pool.start_link(bad)
