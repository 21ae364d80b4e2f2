"""otpy's structured logs: structlog events carrying the node's context.

Every process of a node logs the same way, because the configuration is
inherited: the zygote is forked from the program, and every process from the
zygote. Each event is one line written with a single ``write()`` to the sink
(stderr, or a file opened for appending), so lines from many processes never
interleave.

Configure with :func:`configure_logging` or, before the program starts, the
environment: ``OTPY_LOG=json`` (else readable console lines),
``OTPY_LOG_LEVEL=debug|info|warning|error`` (default info),
``OTPY_LOG_FILE=path`` (default stderr). Importing otpy configures nothing:
the environment is read (and the log file opened) when the node starts, or
at the first event logged before that, unless configure_logging came first.
Configuring after the node has started also reconfigures the zygote, so
processes spawned from then on follow; processes already running keep what
they had.

Bound context, added to every event where known: ``node``, ``pid`` (the
process's serial), ``name`` (its registered name) and ``tree`` (the isolated
tree or namespace it runs in; under pytest, named after the test).
"""

from __future__ import annotations

import json as _json
import logging
import os
import sys
from typing import Any

import structlog

from . import process, reasons

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}


class _Sink:
    """structlog's logger object: one ``os.write`` per line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def msg(self, message: str) -> None:
        try:
            os.write(self.fd, (message + "\n").encode("utf-8", "replace"))
        except OSError:
            pass  # logging must never take a process down

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _add_context(logger: Any, method: str, event: dict) -> dict:
    ctx = process.current
    if ctx is not None:
        event.setdefault("node", ctx.node)
        event.setdefault("pid", ctx.pid.serial)
        if ctx.name is not None:
            event.setdefault("name", ctx.name)
        tree = ctx.namespace()
        if tree:
            event.setdefault("tree", tree)
    return event


def _drop_none(logger: Any, method: str, event: dict) -> dict:
    return {key: value for key, value in event.items() if value is not None}


class _State:
    json = False
    level = logging.INFO
    fd = 2
    logger: Any = None  # None until configured (by the environment or configure_logging)


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.lower() in LEVELS:
        return LEVELS[level.lower()]
    raise ValueError(f"log level must be one of {sorted(LEVELS)} or an int, not {level!r}")


def _console(colors: bool) -> Any:
    return structlog.dev.ConsoleRenderer(colors=colors,
                                         exception_formatter=structlog.dev.plain_traceback)


def _build() -> None:
    renderer = (structlog.processors.JSONRenderer(default=repr) if _State.json
                else _console(colors=os.isatty(_State.fd)))
    _State.logger = structlog.wrap_logger(
        _Sink(_State.fd),
        wrapper_class=structlog.make_filtering_bound_logger(_State.level),
        processors=[
            _add_context,
            _drop_none,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
    )


def apply(json: bool, level: int, path: str | None) -> None:
    """Set this process's configuration (the zygote runs this when told)."""
    fd = 2
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if _State.fd != 2:
        os.close(_State.fd)
    _State.json, _State.level, _State.fd = bool(json), level, fd
    _build()


def configure_logging(*, json: bool = False, level: str | int = "info",
                      file: str | os.PathLike | None = None) -> None:
    """Choose how otpy logs: JSON lines or readable console lines, the least
    level written, and where (a file to append to; stderr by default)."""
    level_no = _level(level)
    path = None if file is None else os.fspath(file)
    apply(json, level_no, path)
    ctx = process.current
    if ctx is not None and ctx.is_main:
        ctx.cast_ctrl("log_config", bool(json), level_no, path)


def logger(**context: Any) -> Any:
    """A structlog logger bound to ``context`` (node, pid, ... are added)."""
    if _State.logger is None:
        configure_from_environment()
    return _State.logger.bind(**context) if context else _State.logger


def ensure_configured() -> None:
    """Node start: configure from the environment unless already configured."""
    if _State.logger is None:
        configure_from_environment()


def render_console(event: dict) -> str:
    """One event read back from a JSON log, as a readable line (no colours)."""
    event = dict(event)
    return _console(colors=False)(None, event.get("level", "info"), event)


def parse_lines(data: bytes) -> list[dict]:
    """The events of a JSON log; lines that are not JSON objects are skipped."""
    events = []
    for line in data.splitlines():
        try:
            event = _json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def log_trapped_exit(ctx: Any, exit_message: Any) -> None:
    """The program's process traps exits: an abnormal one is queued and logged."""
    logger().warning("linked process exited", from_pid=exit_message.pid.serial,
                     reason=reasons.describe(exit_message.reason))


def configure_from_environment() -> None:
    """This process's configuration from OTPY_LOG, OTPY_LOG_LEVEL and OTPY_LOG_FILE."""
    fmt = os.environ.get("OTPY_LOG", "console").lower()
    try:
        level = _level(os.environ.get("OTPY_LOG_LEVEL", "info"))
    except ValueError as exc:
        print(f"otpy: ignoring OTPY_LOG_LEVEL: {exc}", file=sys.stderr)
        level = logging.INFO
    try:
        apply(fmt == "json", level, os.environ.get("OTPY_LOG_FILE") or None)
    except OSError as exc:
        print(f"otpy: ignoring OTPY_LOG_FILE: {exc}", file=sys.stderr)
        apply(fmt == "json", level, None)
