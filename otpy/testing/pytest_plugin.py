"""The otpy pytest plugin (registered through the ``pytest11`` entry point).

- ``otpy_tree``: an isolated supervision tree per test, named after the test.
- markers: unit, integration, system, performance, chaos; and
  ``layer(name)``: a test marked with a layer above ``--otpy-layer`` (mock <
  bridge < full) is skipped, saying why.
- a per-test leak report: a test that leaves an otpy process running fails in
  teardown, with the process listed (and killed); whatever it left in the
  program's mailbox is dropped so it cannot reach the next test.
- quiet logs: otpy's log events (every process of the node, the zygote
  included) go to an in-memory file instead of stderr; when a test fails, the
  events logged during it are shown with the failure, as an "otpy log"
  section. ``--otpy-log=stderr`` leaves logging as configured instead, and
  ``--otpy-log-level`` sets the level captured (default debug).

Nothing here starts otpy: projects that never call it pay nothing.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import pytest

from .. import Timeout, configure_logging, processes, receive
from .. import self as otpy_self
from .. import lowlevel
from ._layers import LAYERS, check_layer, select_layer, skip_reason
from ._tree import Tree, isolated_tree, reap

MARKERS = {
    "unit": "fast, one process or none",
    "integration": "several processes working together",
    "system": "a whole application tree",
    "performance": "measures speed; compare against a baseline, never assert a timing",
    "chaos": "kills, hangs and corrupts things on purpose",
}
GRACE = 2.0  # a process that just sent its last message may still be exiting


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--otpy-leaks", choices=["fail", "warn", "off"], default="fail",
                     help="what to do when a test leaves otpy processes running")
    parser.addoption("--otpy-log", choices=["capture", "stderr"], default="capture",
                     help="capture otpy's logs and show them with failures (default), "
                          "or leave them on stderr")
    parser.addoption("--otpy-log-level", default="debug", choices=sorted(lowlevel.LOG_LEVELS),
                     help="the least level of otpy log events captured (default debug)")
    parser.addoption("--otpy-layer", choices=LAYERS, default=None,
                     help="the highest test layer to run (mock < bridge < full); tests marked "
                          "with a higher layer are skipped (default: OTPY_LAYER, else full)")


class _CapturedLog:
    """A memfd every process of the node appends its log lines to (inherited
    through the zygote), emptied before each test and read when one fails."""

    def __init__(self, level: str) -> None:
        self.fd = os.memfd_create("otpy-test-log", os.MFD_CLOEXEC)
        configure_logging(json=True, level=level, file=f"/proc/{os.getpid()}/fd/{self.fd}")

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)

    def text(self) -> str:
        data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        return "\n".join(lowlevel.render_log_event(event)
                         for event in lowlevel.parse_log_lines(data))

    def close(self) -> None:
        lowlevel.reset_logging()
        os.close(self.fd)


_captured = pytest.StashKey[_CapturedLog]()


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.addinivalue_line("markers", "layer(name): the test layer it needs (mock, bridge, "
                            "full); skipped when --otpy-layer selects a lower one")
    if config.getoption("--otpy-layer", None) is not None:
        select_layer(config.getoption("--otpy-layer"))
    if config.getoption("--otpy-log", "stderr") == "capture":
        config.stash[_captured] = _CapturedLog(config.getoption("--otpy-log-level"))


def pytest_unconfigure(config: pytest.Config) -> None:
    select_layer(None)
    captured = config.stash.get(_captured, None)
    if captured is not None:
        captured.close()
        del config.stash[_captured]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    captured = item.config.stash.get(_captured, None)
    if captured is not None:
        captured.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    captured = item.config.stash.get(_captured, None)
    if captured is not None and report.failed:
        text = captured.text()
        if text:
            report.sections.append((f"otpy log ({report.when})", text))


def tree_name(nodeid: str) -> str:
    """A readable name from a test id (``tests/test_x.py::test_y[1]``)."""
    return re.sub(r"[^A-Za-z0-9_.\[\]-]+", ".", nodeid).strip(".") or "test"


@pytest.fixture
def otpy_tree(request: pytest.FixtureRequest) -> Iterator[Tree]:
    """An isolated supervision tree for this test; it owns what the test starts in
    it (``adopt=True``): those processes are shut down with it, not reported."""
    with isolated_tree(tree_name(request.node.nodeid), layer=layer_of(request.node),
                       adopt=True) as tree:
        yield tree


def layer_of(item: pytest.Item) -> str | None:
    """The layer a test's ``@pytest.mark.layer(...)`` names, if any."""
    marker = item.get_closest_marker("layer")
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.layer(name) with one of "
                                f"{', '.join(LAYERS)}")
    try:
        return check_layer(marker.args[0], f"{item.nodeid}: the layer marker")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = skip_reason(layer_of(item))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _otpy_leak_report(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(processes()) if lowlevel.node_running() else set()
    yield
    mode = request.config.getoption("--otpy-leaks")
    if not lowlevel.node_running() or mode == "off":
        return
    expected = before | {otpy_self()}
    leaked = reap([p for p in processes() if p not in expected], GRACE)
    while True:  # what a test left in the mailbox must not reach the next test
        try:
            receive(timeout=0)
        except Timeout:
            break
    if leaked:
        message = f"test left otpy processes running (killed now): {leaked}"
        if mode == "fail":
            pytest.fail(message, pytrace=False)
        request.node.warn(pytest.PytestWarning(message))
