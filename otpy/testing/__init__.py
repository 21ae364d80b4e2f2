"""Testing otpy programs: isolation, deterministic waiting, real failure
injection, test layers, and a pytest plugin.

    from otpy.testing import isolated_tree, inject_failure, wait_down

    def test_checkout():
        with isolated_tree("test_checkout", children=[Pool.child_spec(name="pool")]) as tree:
            assert otpy.call("pool", "status") == "idle"
            inject_failure("crash", "pool")
            ...

With pytest, the ``otpy_tree`` fixture does the same, named after the test.
Chaos scenarios and load: ``otpy.testing.chaos``. See docs/testing.md.
"""

from ._helpers import (ensure_pool_ready, synchronize, wait_down, wait_event, wait_for,
                       wait_registered)
from ._inject import KINDS, Injection, inject_failure
from ._layers import LAYERS, LayerSkipped, select_layer, selected_layer
from ._tree import LeakError, Tree, active_tree, isolated_tree

__all__ = [
    "LeakError", "Tree", "active_tree", "isolated_tree",
    "synchronize", "wait_down", "wait_for", "wait_registered", "wait_event", "ensure_pool_ready",
    "KINDS", "Injection", "inject_failure",
    "LAYERS", "LayerSkipped", "select_layer", "selected_layer",
]
