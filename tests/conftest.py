"""Every test runs inside its own isolated tree (the ``otpy_tree`` fixture of
the otpy pytest plugin, which also fails a test that leaks a process)."""

from __future__ import annotations

import pytest

import helpers


@pytest.fixture(autouse=True)
def _every_test_in_a_tree(otpy_tree):
    helpers.CURRENT_TREE = otpy_tree
    yield otpy_tree
    helpers.CURRENT_TREE = None
