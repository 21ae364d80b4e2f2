"""The layers: behaviours, testing, observer and otpy_pool import nothing
private of the runtime (only ``otpy`` and ``otpy.lowlevel``), and the tests
import public names only, except tests of the internals themselves."""

from __future__ import annotations

import ast
import pathlib

import pytest

from helpers import ROOT


LAYERS = ["otpy/behaviours", "otpy/testing", "otpy/observer", "otpy/metrics", "otpy_pool"]
# tests that check the runtime's internals on purpose
INTERNAL_TESTS = {"test_zygote_send.py", "test_call_watch.py", "test_reader_role.py",
                  "test_spare.py",  # which OS process a spawn became
                  "test_observer.py",
                  # the breaker's and limiter's pure state machines, against models
                  "test_breaker_machine.py", "test_limiter_algorithms.py",
                  # the limiter's shared table, its lock and its storage
                  "test_limiter_shared.py",
                  # the pool's bookkeeping without processes, its options' and protocol's tables
                  "test_pool_book.py", "test_pool_options.py", "test_pool_protocol_table.py",
                  "test_pool_meter.py",  # the pool's metrics table, without processes
                  "test_claims.py",  # the pool's claims page, its locks across processes, its slots
                  # otpy_pool's one checks module
                  "test_checks.py",
                  # the handle and owner the breaker and limiter share
                  "test_shared_handle.py",
                  # the zygote's relation tables and notice order, without processes
                  "test_zygote_core.py",
                  # frames through the GIL-keeping non-blocking socket calls
                  "test_wire_nowait.py",
                  # descriptors closed when setting up shared memory fails part-way
                  "test_failed_setup_closes.py",
                  # no asyncio waiter left behind by a cancelled call
                  "test_asyncio.py", "test_pool_asyncio.py",
                  # what a spawned process is given at its fork
                  "test_spawn_path.py",
                  # the Ray actor's session bookkeeping, without Ray
                  "test_ray_placement_args.py"}


def imported_modules(path: pathlib.Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def private_of_otpy(module: str) -> bool:
    """otpy._runtime and every other underscore module of otpy outside its own package."""
    return module.startswith("otpy._") or module.startswith("otpy.lowlevel._")


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_public_otpy(layer: str) -> None:
    offenders = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in imported_modules(path):
            if private_of_otpy(module):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, "private runtime imports:\n" + "\n".join(offenders)


def test_tests_and_examples_import_public_names_only() -> None:
    offenders = []
    paths = list((ROOT / "tests").rglob("*.py")) + list((ROOT / "examples").rglob("*.py"))
    for path in sorted(paths):
        if path.name in INTERNAL_TESTS:
            continue
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] in ("otpy", "otpy_pool") and any(p.startswith("_") for p in parts[1:]):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, "private imports in tests:\n" + "\n".join(offenders)


def test_the_checker_sees_a_private_import(tmp_path: pathlib.Path) -> None:
    """The check above would catch ``from .._runtime import api`` in a layer."""
    sample = ROOT / "otpy" / "behaviours" / "_layer_probe.py"
    sample.write_text("from .._runtime import api\n")
    try:
        assert "otpy._runtime" in imported_modules(sample)
        assert private_of_otpy("otpy._runtime.api")
    finally:
        sample.unlink()
