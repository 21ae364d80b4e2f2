"""The pytest plugin, run for real in a separate pytest process."""

from __future__ import annotations

pytest_plugins = ["pytester"]

LEAKY = '''
import otpy

def idle():
    otpy.receive()

def test_leaks():
    otpy.spawn(idle)

def test_clean(otpy_tree):
    assert otpy.whereis(otpy_tree.name) == otpy_tree.supervisor
'''


def test_plugin_reports_leaks_and_provides_the_fixture(pytester):
    pytester.makepyfile(test_sample=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test left otpy processes running (killed now)*"])


def test_plugin_registers_the_markers(pytester):
    result = pytester.runpytest_subprocess("--markers")
    for marker in ("unit", "integration", "system", "performance", "chaos"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}:*"])


def test_leak_check_can_warn_instead(pytester):
    pytester.makepyfile(test_sample=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--otpy-leaks=warn")
    result.assert_outcomes(passed=2, warnings=1)
