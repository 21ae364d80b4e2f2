"""Flaky-test detection: run a selection N times, each in a different random
order, and report every test that failed in some runs.

    python -m otpy.testing.flaky -n 20 [--seed S] [pytest args]

Each run is a fresh ``pytest`` process (a fresh otpy node) with this module
loaded as a plugin: ``--otpy-shuffle=SEED`` shuffles the collected tests
with that seed, and ``--otpy-flaky-report=FILE`` writes each test's outcome.
Run i uses seed S+i, so a failing order is reproduced with
``pytest -p otpy.testing.flaky --otpy-shuffle=SEED [pytest args]``.

The report lists each test that failed at least once: how many runs it
failed in, and its first failure (run, seed, error). Exit status 1 if any
test failed, 2 if pytest itself could not run, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from typing import Any

import pytest

# ---- the plugin (loaded in each run with -p otpy.testing.flaky) ----------------------

_EXCERPT_LINES = 25


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("otpy flaky detection")
    group.addoption("--otpy-shuffle", type=int, default=None, metavar="SEED",
                    help="run the collected tests in a random order made from SEED")
    group.addoption("--otpy-flaky-report", default=None, metavar="FILE",
                    help="write each test's outcome to FILE (JSON)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.getoption("--otpy-shuffle")
    if seed is not None:
        random.Random(seed).shuffle(items)


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--otpy-shuffle")
    return None if seed is None else f"otpy: tests shuffled with seed {seed}"


_outcomes: dict[str, dict] = {}  # this run's: test id -> {"failed", "error"}


def pytest_configure(config: pytest.Config) -> None:
    _outcomes.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _outcomes.setdefault(report.nodeid, {"failed": False, "error": None})
    if report.failed and not entry["failed"]:
        entry["failed"] = True
        entry["error"] = f"[{report.when}] " + _excerpt(report.longreprtext)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--otpy-flaky-report")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f)


def _excerpt(text: str) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) > _EXCERPT_LINES:
        lines = ["..."] + lines[-_EXCERPT_LINES:]
    return "\n".join(lines)


# ---- the driver -----------------------------------------------------------------------

def run(runs: int, seed: int, pytest_args: list[str], out: Any = sys.stdout) -> int:
    """Run the selection ``runs`` times; print the report; the exit status."""
    failures: dict[str, list[tuple[int, int, str]]] = {}  # test -> [(run, seed, error)]
    seen: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="otpy-flaky-") as tmp:
        for i in range(runs):
            run_seed = seed + i
            report = os.path.join(tmp, f"run{i}.json")
            cmd = [sys.executable, "-m", "pytest", "-p", "otpy.testing.flaky", "-q",
                   "--no-header", "-p", "no:cacheprovider", f"--otpy-shuffle={run_seed}",
                   f"--otpy-flaky-report={report}", *pytest_args]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if not os.path.exists(report) or done.returncode not in (0, 1):
                print(f"run {i + 1}/{runs} (seed {run_seed}): pytest exited with "
                      f"{done.returncode}:\n{_excerpt(done.stdout)}", file=out)
                return 2
            with open(report) as f:
                outcomes = json.load(f)
            failed = [nodeid for nodeid, o in outcomes.items() if o["failed"]]
            for nodeid, o in outcomes.items():
                seen[nodeid] = seen.get(nodeid, 0) + 1
                if o["failed"]:
                    failures.setdefault(nodeid, []).append((i + 1, run_seed, o["error"]))
            print(f"run {i + 1}/{runs} (seed {run_seed}): {len(outcomes)} tests, "
                  f"{len(failed)} failed", file=out, flush=True)
    print(f"\n{len(seen)} tests, {runs} runs, seeds {seed}..{seed + runs - 1}", file=out)
    if not failures:
        print("no test failed in any run", file=out)
        return 0
    for nodeid, fails in sorted(failures.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        total = seen[nodeid]
        label = "FAILED ALWAYS" if len(fails) == total else "FLAKY"
        first_run, first_seed, error = fails[0]
        print(f"\n{label} {nodeid}: failed {len(fails)}/{total} runs ({len(fails) / total:.0%})"
              f"; first in run {first_run} (seed {first_seed}, reproduce with "
              f"--otpy-shuffle={first_seed}):", file=out)
        print("    " + error.replace("\n", "\n    "), file=out)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m otpy.testing.flaky",
        description="Run a pytest selection N times in random orders; report tests that failed "
                    "in some runs (exit 1 if any). Arguments not listed here go to pytest.")
    parser.add_argument("-n", "--runs", type=int, default=20, help="how many runs (default 20)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the first run (run i uses seed+i); default random")
    args, pytest_args = parser.parse_known_args(argv)
    if args.runs < 1:
        parser.error(f"-n must be at least 1, not {args.runs}")
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    return run(args.runs, seed, pytest_args)


if __name__ == "__main__":
    sys.exit(main())
