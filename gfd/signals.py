"""Signal wiring shared by the long-running processes: stop on TERM/INT/QUIT, reload on HUP.

No Python code runs when a signal arrives: the handlers are a C function that does nothing, and the
interpreter's own C-level handler writes the signal's number into a pipe (`signal.set_wakeup_fd`). A
handler written in Python would run bytecode for every signal and, in a storm, nest handler inside
handler until RecursionError. A dispatcher thread (started through the program's Lifecycle) reads the
pipe: a stop signal starts the Lifecycle's orderly shutdown (bounded by its deadline); any number of
SIGHUPs read at once is one reload.
"""

from __future__ import annotations

import contextlib
import operator
import os
import select
import signal
from collections.abc import Callable

import structlog

from gfd.lifecycle import Lifecycle

log = structlog.get_logger("gfd")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_NOTHING = operator.is_  # a C function of two arguments: calling it runs no bytecode


def install(life: Lifecycle, reload: Callable[[], None] | None = None) -> None:
    """Stop signals stop `life` (and arm its deadline); SIGHUP calls `reload` (without one, SIGHUP keeps
    its default action). Call from the main thread, before starting other threads."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    watched = STOP_SIGNALS + ((signal.SIGHUP,) if reload is not None else ())

    def close_pipe() -> None:  # on the main thread, after the dispatcher has ended
        signal.set_wakeup_fd(-1)
        if reload is not None:
            # Ignored from now on: a HUP arriving while the interpreter shuts down would otherwise meet the
            # default action (terminate) once Python has removed its handlers.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.close(read_fd)
        os.close(write_fd)

    life.callback("signal pipe", close_pipe)  # registered first: closed after the dispatcher
    for sig in watched:
        signal.signal(sig, _NOTHING)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    life.start_thread("signals", lambda: _dispatch(read_fd, life, reload), wake=lambda: _poke(write_fd))
    life.enforce_deadline()


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # the pipe is full: a wake-up is already pending
        os.write(fd, b"\0")


def _dispatch(fd: int, life: Lifecycle, reload: Callable[[], None] | None) -> None:
    while not life.stopping.is_set():
        select.select([fd], [], [])
        received: set[int] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(fd, 4096):
                received.update(data)
        stop = next((s for s in STOP_SIGNALS if s in received), None)
        if stop is not None:
            name = signal.Signals(stop).name
            log.info("Received signal, shutting down", signal=name)
            life.stop(f"signal {name}")
            return
        if signal.SIGHUP in received and reload is not None:
            log.info("Received SIGHUP, reloading")
            reload()
