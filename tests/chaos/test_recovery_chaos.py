"""Recovery under chaos: 8 callers under continuous load while 60% of the
pool's workers are SIGKILLed in quick succession."""

from __future__ import annotations

import pytest

from otpy_pool.bench import chaos_kill

pytestmark = pytest.mark.layer("full")  # real pool workers


@pytest.mark.chaos
def test_sixty_percent_of_workers_killed_under_load():
    figures = chaos_kill(fraction=0.6, callers=8, calls=150, size=5)
    print(figures)
    assert figures["callers_lost"] == 0  # no call hung
    assert figures["success_rate"] >= 0.999, figures
    assert figures["charges_run_twice"] == 0  # a non-idempotent command never ran twice
    assert figures["workers_killed"] == 3
    assert figures["worker_restarts"] >= 3  # and the pool was whole again (checked inside)
