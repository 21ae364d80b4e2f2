"""No function of the pool's modules is over 40 lines (issue 23): the
riskiest code is the easiest to change when each step is a function of its
own. Docstrings and comments count: they are part of what a reader reads."""

from __future__ import annotations

import ast

import pytest

from helpers import ROOT

LONGEST = 40
POOL_MODULES = ["_pool.py", "_pool_server.py", "_pool_book.py", "_pipeline.py", "_protocol.py",
                "_calls.py", "_worker.py", "_pool_options.py", "_pool_executor.py",
                "_counters.py"]


@pytest.mark.parametrize("module", POOL_MODULES)
def test_no_function_is_over_40_lines(module):
    path = ROOT / "otpy_pool" / module
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert not long, f"{module}: {', '.join(long)}"
