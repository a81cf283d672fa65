"""Signal wiring shared by the long-running processes: stop on TERM/INT/QUIT, reload on HUP.

The handlers only set a flag and write one byte to a self-pipe: no logging, no locks, nothing that can
re-enter or block, so a storm of any size cannot crash or hang the process. A dispatcher thread reads the
pipe and calls `stop`/`reload`; flags coalesce a storm into one reload. After a stop request the process
is given `STOP_GRACE_S` to finish cleanly, then it exits anyway (keeping whatever it had published).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog

log = structlog.get_logger("gfd")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
STOP_GRACE_S = 0.9


class _Pending:
    stop: int = 0  # the signal number, 0 when none
    reload = False


def install(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    pending = _Pending()
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        pending.stop = signum
        # Ignored from now on: a HUP arriving while the interpreter shuts down would otherwise meet the
        # default action (terminate) once Python has removed its handlers.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _poke(write_fd)

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        pending.reload = True
        _poke(write_fd)

    threading.Thread(target=_dispatch, args=(pending, read_fd, stop, reload), name="signals", daemon=True).start()
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # the pipe is full: a wake-up is already pending
        os.write(fd, b"\0")


def _dispatch(pending: _Pending, fd: int, stop: Callable[[], None], reload: Callable[[], None]) -> None:
    import select

    while True:
        select.select([fd], [], [])
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        if pending.stop:
            log.info("Received signal, shutting down", signal=signal.Signals(pending.stop).name)
            stop()
            time.sleep(STOP_GRACE_S)
            log.error("shutdown did not finish in time; exiting now", grace_s=STOP_GRACE_S)
            os._exit(0)
        if pending.reload:
            pending.reload = False
            log.info("Received SIGHUP, reloading")
            reload()
