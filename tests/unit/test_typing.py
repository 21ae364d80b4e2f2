"""mypy is clean on the public API: otpy, otpy.lowlevel, the behaviours, and
the public modules of otpy.testing, otpy.observer and otpy_pool."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT


PUBLIC = ["otpy/__init__.py", "otpy/lowlevel", "otpy/behaviours", "otpy/testing/__init__.py",
          "otpy/observer/__init__.py", "otpy/metrics/__init__.py", "otpy_pool/__init__.py"]


def test_public_api_type_checks() -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir=/dev/null", "--no-error-summary", *PUBLIC],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
