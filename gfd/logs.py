"""structlog setup: readable lines on a terminal, JSON otherwise (or when asked)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "auto", level: str | int = logging.INFO) -> None:
    """fmt: auto | console | json; level: a name (debug, info, ...) or a number. Logs go to stderr: stdout
    may carry the labels."""
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes each event line to whatever sys.stderr is at that moment (it may be replaced)."""

    def __init__(self, *_args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg
