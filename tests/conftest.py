"""Every test runs inside its own isolated tree (the ``otpy_tree`` fixture of
the otpy pytest plugin, which also fails a test that leaks a process).

Every test also gets one category marker (unit, integration, system,
performance, chaos; see docs/testing.md, "Categories") from the folder it is
in: ``tests/<category>/...``. Integration tests are further grouped by the
package they exercise (runtime, behaviours, testing, observer, pool). A
category marker written on a test wins over its folder's. ``distributed``
marks the tests that run pool workers on a Ray cluster (in addition to
their category).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers

CATEGORIES = ("unit", "integration", "system", "performance", "chaos")

TESTS = Path(__file__).resolve().parent


def category_of(item: pytest.Item) -> str:
    """The test's category: its explicit marker, else its folder's."""
    for marker in item.iter_markers():
        if marker.name in CATEGORIES:
            return marker.name
    try:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
    except ValueError:  # collected from outside tests/ (a doctest, say)
        folder = None
    if folder not in CATEGORIES:
        raise pytest.UsageError(f"{item.nodeid}: a test module belongs in tests/<category>/, "
                                f"one of {', '.join(CATEGORIES)}")
    return folder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "distributed: needs a Ray cluster (the tests start "
                            "one of their own on this machine): pytest -m distributed")


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
