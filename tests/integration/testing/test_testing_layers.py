"""Test layers: --otpy-layer, the layer marker, isolated_tree(layer=...)."""

from __future__ import annotations

import unittest

import pytest

from otpy.testing import LayerSkipped, isolated_tree, select_layer, selected_layer

pytest_plugins = ["pytester"]

LAYERED = '''
import pytest

@pytest.mark.layer("mock")
def test_mock(otpy_tree):
    assert otpy_tree.layer == "mock"

@pytest.mark.layer("bridge")
def test_bridge():
    pass

@pytest.mark.layer("full")
def test_full():
    pass

def test_unmarked():
    pass
'''


def test_a_run_skips_tests_above_its_layer_saying_why(pytester):
    pytester.makepyfile(test_sample=LAYERED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--otpy-layer=bridge", "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*test_sample.py:11: needs the 'full' layer; "
                                 "this run selected 'bridge'*"])
    mock_only = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--otpy-layer=mock")
    mock_only.assert_outcomes(passed=2, skipped=2)


def test_every_layer_runs_by_default_and_the_environment_can_select(pytester, monkeypatch):
    pytester.makepyfile(test_sample=LAYERED)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=4)
    monkeypatch.setenv("OTPY_LAYER", "mock")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2, skipped=2)


def test_a_bad_layer_marker_is_a_usage_error(pytester):
    pytester.makepyfile(test_sample='''
import pytest

@pytest.mark.layer("fast")
def test_x():
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the layer marker must be one of mock, bridge, full, "
                                 "not 'fast'*"])


def test_isolated_tree_above_the_selected_layer_is_skipped():
    assert selected_layer() == "full"
    select_layer("mock")
    try:
        with pytest.raises(LayerSkipped, match="needs the 'bridge' layer") as info:
            with isolated_tree("layered", layer="bridge"):
                pass
        assert isinstance(info.value, unittest.SkipTest)
        with isolated_tree("layered", layer="mock") as tree:
            assert tree.layer == "mock"
    finally:
        select_layer(None)
    with pytest.raises(ValueError, match="layer must be one of mock, bridge, full, not 'all'"):
        isolated_tree("bad", layer="all")
