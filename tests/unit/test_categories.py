"""Test categories: every test has exactly one of unit, integration, system,
performance, chaos (tests/conftest.py), and ``-m`` selects by them."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import CATEGORIES

from helpers import ROOT


def test_every_test_of_this_run_has_exactly_one_category(request):
    wrong = {}
    for item in request.session.items:
        names = {m.name for m in item.iter_markers()} & set(CATEGORIES)
        if len(names) != 1:
            wrong[item.nodeid] = sorted(names)
    assert wrong == {}
    assert request.node.get_closest_marker("unit") is not None  # from its folder


SAMPLE = {  # a module of each category, by its folder
    "tests/unit/test_zygote_core.py": "unit",
    "tests/integration/runtime/test_processes.py": "integration",
    "tests/system/test_orphans.py": "system",
    "tests/performance/test_bench.py": "performance",
    "tests/chaos/test_testing_inject.py": "chaos",
}


def collect(*args: str) -> set[str]:
    """The test ids ``pytest --collect-only`` selects among the SAMPLE modules."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *args, *SAMPLE],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return {line for line in out.stdout.splitlines() if "::" in line}


def test_marker_expressions_select_by_category():
    everything = collect()
    by_module = {module: {t for t in everything if t.startswith(module + "::")}
                 for module in SAMPLE}
    assert all(by_module.values())
    # the category markers exist before -m deselects
    assert collect("-m", "unit or chaos") == (by_module["tests/unit/test_zygote_core.py"]
                                              | by_module["tests/chaos/test_testing_inject.py"])
    performance = by_module["tests/performance/test_bench.py"]
    assert collect("-m", "not performance") == everything - performance


def test_a_module_outside_the_category_folders_is_refused():
    # in tests/, in no category's folder (a name of its own: another run may be collecting)
    probe = ROOT / "tests" / f"test_category_probe_{os.getpid()}.py"
    probe.write_text("def test_nothing():\n    pass\n")
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", str(probe)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert out.returncode != 0
    assert f"{probe.name}::test_nothing: a test module belongs in tests/<category>/" \
        in out.stdout + out.stderr
