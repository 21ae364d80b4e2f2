"""Test isolation for otpy programs: ``isolated_tree`` and a pytest plugin.

    from otpy.testing import isolated_tree

    def test_checkout():
        with isolated_tree("test_checkout", children=[Pool.child_spec(name="pool")]) as tree:
            assert otpy.call("pool", "status") == "idle"

With pytest, the ``otpy_tree`` fixture does the same, named after the test.
"""

from ._tree import LeakError, Tree, isolated_tree

__all__ = ["LeakError", "Tree", "isolated_tree"]
