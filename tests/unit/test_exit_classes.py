"""How a death is counted (otpy.lowlevel.observation.exit_class) and what a
process is called where no pid may be shown (process_label): both read
only text, as the zygote and otpy.metrics have it."""

from __future__ import annotations

import pytest

from otpy.lowlevel import describe_reason
from otpy.lowlevel.observation import EXIT_CLASSES, exit_class, process_label


@pytest.mark.parametrize("reason, cls", [
    ("normal", "normal"),
    ("shutdown", "shutdown"),
    (("shutdown", "planned"), "shutdown"),
    (("shutdown", {"why": 1}), "shutdown"),
    ("killed", "killed"),
    (("signal", "SIGSEGV"), "signal"),
    (("exit", 3), "exit"),
    (RuntimeError("boom"), "error"),
    ("noproc", "error"),
    (("shutdowns", 1), "error"),   # a tuple that only looks like one
    ({"state": "bad"}, "error"),
    ("x" * 1000, "error"),          # cut to 300 characters, still one class
    (("shutdown", "y" * 1000), "shutdown"),
])
def test_exit_class_of_each_kind_of_reason(reason, cls):
    assert exit_class(describe_reason(reason)) == cls
    assert cls in EXIT_CLASSES


def test_process_label_prefers_the_name_then_the_child_id_then_the_behaviour():
    assert process_label("cache", False, "c", "Counter") == "cache"
    assert process_label(None, True, None, None) == "(program)"
    assert process_label(None, False, "shard-0", "Counter") == "[shard-0]"
    assert process_label(None, False, None, "Counter") == "(Counter)"
    assert process_label(None, False, None, None) == "-"
