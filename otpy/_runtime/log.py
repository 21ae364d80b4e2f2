"""otpy's structured logs: structlog events carrying the node's context.

Every process of a node logs the same way, because the configuration is
inherited: the zygote is forked from the program, and every process from the
zygote. Each event is one line written with a single ``write()`` to the sink
(stderr, or a file opened for appending), so lines from many processes never
interleave.

Quiet by default, as OTP 21+ is: warnings and errors are written (crash
reports, restarts, restart intensity reached, failed starts, undecodable
messages); progress (a process spawned or exited, a child started, a child
stopped on purpose) is at info and debug, written once asked for.

Configure with :func:`configure_logging` or, before the program starts, the
environment: ``OTPY_LOG=json`` (else readable console lines),
``OTPY_LOG_LEVEL=debug|info|warning|error`` (default warning),
``OTPY_LOG_FILE=path`` (default stderr). Importing otpy configures nothing:
the environment is read (and the log file opened) when the node starts, or
at the first event logged before that, unless configure_logging came first.
Configuring after the node has started also reconfigures the zygote, so
processes spawned from then on follow; processes already running keep what
they had.

structlog is imported at the first event a process writes, not before: it
brings rich and asyncio with it (about 60 ms and several MiB of memory per
process that imports them), which a process that writes nothing never
needs. The level is checked first, by :class:`Logger`.

Bound context, added to every event where known: ``node``, ``pid`` (the
process's serial), ``name`` (its registered name) and ``tree`` (the isolated
tree or namespace it runs in; under pytest, named after the test).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import process, reasons

# logging's numbers, without importing logging
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR,
          "critical": CRITICAL}
DEFAULT_LEVEL = "warning"


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
    configured = False  # by the environment or configure_logging
    json = False
    level = LEVELS[DEFAULT_LEVEL]
    fd = 2
    structlog: Any = None  # structlog's logger, made at the first event written


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.lower() in LEVELS:
        return LEVELS[level.lower()]
    raise ValueError(f"log level must be one of {sorted(LEVELS)} or an int, not {level!r}")


def _console(colors: bool) -> Any:
    import structlog

    return structlog.dev.ConsoleRenderer(colors=colors,
                                         exception_formatter=structlog.dev.plain_traceback)


def _structlog() -> Any:
    """structlog's logger for this configuration, made (and structlog imported) once."""
    if _State.structlog is None:
        import structlog

        renderer = (structlog.processors.JSONRenderer(default=repr) if _State.json
                    else _console(colors=os.isatty(_State.fd)))
        _State.structlog = structlog.wrap_logger(
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
    return _State.structlog


class Logger:
    """What otpy logs through: structlog's bound-logger methods, with the
    level checked here first, so that an event below it costs a comparison
    and structlog is only imported for an event that is written."""

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context

    def bind(self, **context: Any) -> Logger:
        """A logger that adds ``context`` to every event."""
        return Logger({**self._context, **context})

    def _write(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if level < _State.level:
            return
        target = _structlog()
        if self._context:
            target = target.bind(**self._context)
        getattr(target, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._write(DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._write(INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write(WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write(ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback)."""
        self._write(ERROR, "exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._write(CRITICAL, "critical", event, fields)


_ROOT = Logger({})


def apply(json: bool, level: int, path: str | None) -> None:
    """Set this process's configuration (the zygote runs this when told)."""
    fd = 2
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if _State.fd != 2:
        os.close(_State.fd)
    _State.json, _State.level, _State.fd = bool(json), level, fd
    _State.configured = True
    _State.structlog = None  # made again, as configured, at the next event written


def configure_logging(*, json: bool = False, level: str | int = DEFAULT_LEVEL,
                      file: str | os.PathLike | None = None) -> None:
    """Choose how otpy logs: JSON lines or readable console lines, the least
    level written (warnings and errors by default; "info" adds children
    started and stopped, "debug" every process spawned and exited), and where
    (a file to append to; stderr by default)."""
    level_no = _level(level)
    path = None if file is None else os.fspath(file)
    apply(json, level_no, path)
    ctx = process.current
    if ctx is not None and ctx.is_main:
        ctx.cast_ctrl("log_config", bool(json), level_no, path)


def logger(**context: Any) -> Logger:
    """A logger bound to ``context`` (node, pid, ... are added)."""
    if not _State.configured:
        configure_from_environment()
    return Logger(context) if context else _ROOT


def enabled(level: int) -> bool:
    """Whether an event at ``level`` would be written (to skip building one)."""
    if not _State.configured:
        configure_from_environment()
    return level >= _State.level


def ensure_configured() -> None:
    """Node start: configure from the environment unless already configured."""
    if not _State.configured:
        configure_from_environment()


def render_console(event: dict) -> str:
    """One event read back from a JSON log, as a readable line (no colours)."""
    event = dict(event)
    return _console(colors=False)(None, event.get("level", "info"), event)


def parse_lines(data: bytes) -> list[dict]:
    """The events of a JSON log; lines that are not JSON objects are skipped."""
    import json

    events = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
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
        level = _level(os.environ.get("OTPY_LOG_LEVEL", DEFAULT_LEVEL))
    except ValueError as exc:
        print(f"otpy: ignoring OTPY_LOG_LEVEL: {exc}", file=sys.stderr)
        level = LEVELS[DEFAULT_LEVEL]
    try:
        apply(fmt == "json", level, os.environ.get("OTPY_LOG_FILE") or None)
    except OSError as exc:
        print(f"otpy: ignoring OTPY_LOG_FILE: {exc}", file=sys.stderr)
        apply(fmt == "json", level, None)
