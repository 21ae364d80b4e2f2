"""No function of otpy_pool's modules is over 40 lines (issue 23): the
riskiest code is the easiest to change when each step is a function of its
own. Docstrings and comments count: they are part of what a reader reads."""

from __future__ import annotations

import ast

import pytest

from helpers import ROOT

LONGEST = 40
POOL_MODULES = sorted(str(p.relative_to(ROOT / "otpy_pool"))
                      for p in (ROOT / "otpy_pool").rglob("*.py"))  # every one of them


@pytest.mark.parametrize("module", POOL_MODULES)
def test_no_function_is_over_40_lines(module):
    path = ROOT / "otpy_pool" / module
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert not long, f"{module}: {', '.join(long)}"
