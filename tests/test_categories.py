"""Test categories: every test has exactly one of unit, integration, system,
performance, chaos (tests/conftest.py), and ``-m`` selects by them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import CATEGORIES

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_of_this_run_has_exactly_one_category(request):
    wrong = {}
    for item in request.session.items:
        names = {m.name for m in item.iter_markers()} & set(CATEGORIES)
        if len(names) != 1:
            wrong[item.nodeid] = sorted(names)
    assert wrong == {}
    assert request.node.get_closest_marker("unit") is not None  # from the module table


SAMPLE = {  # a module of each category (the last by its own marker, not the table)
    "tests/test_zygote_core.py": "unit",
    "tests/test_processes.py": "integration",
    "tests/test_orphans.py": "system",
    "tests/test_bench.py": "performance",
    "tests/test_testing_inject.py": "chaos",
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
    # the category markers exist before -m deselects (a marker expression, a module's own marker)
    assert collect("-m", "unit or chaos") == (by_module["tests/test_zygote_core.py"]
                                              | by_module["tests/test_testing_inject.py"])
    assert collect("-m", "not performance") == everything - by_module["tests/test_bench.py"]
