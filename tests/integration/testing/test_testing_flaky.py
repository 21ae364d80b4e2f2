"""The flaky-test detector, run for real on a small suite in a separate directory."""

from __future__ import annotations

import sys


pytest_plugins = ["pytester"]

ORDER_DEPENDENT = '''
STATE = []

def test_sets():
    STATE.append(1)

def test_needs_it_unset():
    assert not STATE, "test_sets ran first"

def test_fine():
    pass
'''

ALWAYS = '''
def test_broken():
    assert 1 == 2
'''


def detector(pytester, *args):
    return pytester.run(sys.executable, "-m", "otpy.testing.flaky", *args, timeout=120)


def test_reports_a_test_that_fails_in_some_orders_and_how_to_reproduce_it(pytester):
    pytester.makepyfile(test_sample=ORDER_DEPENDENT)
    result = detector(pytester, "-n", "8", "--seed", "1")
    assert result.ret == 1
    out = result.stdout.str()
    assert "8 runs, seeds 1..8" in out
    line = next(l for l in out.splitlines() if l.startswith("FLAKY"))
    assert "test_needs_it_unset" in line
    failed = int(line.split("failed ")[1].split("/")[0])
    assert 0 < failed < 8
    assert "test_sets ran first" in out  # the first failure's error
    assert "test_fine" not in out.split("seeds 1..8")[1]
    # the seed it names reproduces the failing order
    seed = out.split("--otpy-shuffle=")[1].split(")")[0]
    again = pytester.runpytest_subprocess("-p", "otpy.testing.flaky", f"--otpy-shuffle={seed}",
                                          "-p", "no:cacheprovider")
    again.assert_outcomes(passed=2, failed=1)
    again.stdout.fnmatch_lines([f"*shuffled with seed {seed}*"])


def test_always_failing_tests_are_reported_and_a_clean_suite_passes(pytester):
    pytester.makepyfile(test_broken=ALWAYS, test_ok="def test_ok():\n    pass\n")
    result = detector(pytester, "-n", "2", "--seed", "5")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["FAILED ALWAYS *test_broken* failed 2/2 runs (100%)*"])
    clean = detector(pytester, "-n", "2", "test_ok.py")
    assert clean.ret == 0
    assert "no test failed in any run" in clean.stdout.str()


def test_pytest_usage_errors_are_not_reported_as_clean(pytester):
    result = detector(pytester, "-n", "2", "--no-such-option")
    assert result.ret == 2
