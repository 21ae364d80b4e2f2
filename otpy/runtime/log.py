"""structlog loggers of the runtime, routed through the stdlib ``otpy`` logger.

otpy does not configure structlog globally (that is the application's
choice); it wraps the stdlib logger "otpy", so applications control level and
output the usual way.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_logger = structlog.wrap_logger(
    logging.getLogger("otpy"),
    wrapper_class=structlog.stdlib.BoundLogger,
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.processors.format_exc_info,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
)


def logger(**context: Any) -> structlog.stdlib.BoundLogger:
    return _logger.bind(**context)


def log_trapped_exit(ctx: Any, exit_message: Any) -> None:
    """The program's process traps exits: an abnormal one is queued and logged."""
    logger(node=ctx.node, pid=repr(ctx.pid)).warning(
        "linked process exited", from_pid=repr(exit_message.pid), reason=repr(exit_message.reason)
    )
