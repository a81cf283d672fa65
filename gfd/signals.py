"""Signal wiring shared by the long-running processes: stop on TERM/INT/QUIT, reload on HUP."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

import structlog

log = structlog.get_logger("gfd")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def install(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """Handlers only record the request: the main loop acts on it (handlers run between bytecodes)."""

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("Received signal, shutting down", signal=signal.Signals(signum).name)
        stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        log.info("Received SIGHUP, reloading")
        reload()

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
