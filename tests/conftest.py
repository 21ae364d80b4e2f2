"""Every test runs inside its own isolated tree (the ``otpy_tree`` fixture of
the otpy pytest plugin, which also fails a test that leaks a process).

Every test also gets one category marker (unit, integration, system,
performance, chaos; see docs/testing.md, "Categories"): its module's, from
the table below, or "integration" for a module not listed. A category marker
written on the test or its module wins. The table keeps files where they are
while tests are still being added; moving a module means editing one line.
"""

from __future__ import annotations

import pytest

import helpers

CATEGORIES = ("unit", "integration", "system", "performance", "chaos")

MODULE_CATEGORY = {
    # unit: no otpy process, or one tool run (fast, pure logic)
    "test_zygote_core": "unit",
    "test_errors": "unit",
    "test_layers": "unit",
    "test_breaker_properties": "unit",
    "test_typing": "unit",
    "test_categories": "unit",
    # system: whole programs, subprocesses, external servers, terminals
    "test_examples": "system",
    "test_orphans": "system",
    "test_hardening_programs": "system",
    "test_growth_limits": "system",
    "test_growth_threads": "system",
    "test_observer_live": "system",
    "test_pytest_plugin": "system",
    "test_docs": "system",
    "test_limiter_redis": "system",
    # performance: runs the benchmarks (quick mode) or measures per-process costs
    "test_bench": "performance",
    "test_pool_bench": "performance",
    "test_growth": "performance",
    # chaos: modules that mark themselves (test_pool_chaos, test_testing_chaos,
    # test_testing_inject, test_recovery_chaos)
}


def category_of(item: pytest.Item) -> str:
    """The test's category: its explicit marker, else its module's."""
    for marker in item.iter_markers():
        if marker.name in CATEGORIES:
            return marker.name
    return MODULE_CATEGORY.get(item.path.stem, "integration")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(m.name in CATEGORIES for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, category_of(item)))


@pytest.fixture(autouse=True)
def _every_test_in_a_tree(otpy_tree):
    helpers.CURRENT_TREE = otpy_tree
    yield otpy_tree
    helpers.CURRENT_TREE = None
