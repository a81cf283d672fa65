"""How a program starts and stops: one owner for its resources and threads.

A `Scope` holds what was started, in order: resources (context managers, close callbacks) and threads.
Closing it sets its `stopping` event (the one stop event every loop of the scope waits on), then closes
everything in reverse order; each thread is joined within the scope's deadline. A thread that has not
ended by then is named in the log as hung, and the program's exit status becomes non-zero.

A program owns one `Lifecycle` (a Scope with the program's stop: `stop()` sets `stopping` in it and in
every child scope, and runs the `on_stop` callbacks, which wake loops and cancel API requests). A reload
is a child scope (`life.scope("run")`) closed before the next one opens. `gfd.signals.install` turns
SIGTERM/SIGINT/SIGQUIT into `stop()` and arms the deadline for the whole process: if the program has not
finished `deadline_s` after the stop, it logs which part is still running and exits 1 (`os._exit`, only
there and never on the normal path).

Threads are started only here: `start_thread` for a component's loop, `executor` for a pool that a library
hands work to (gRPC, the HTTP server's route handlers); both are joined when their scope closes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Self, TypeVar

import structlog

log = structlog.get_logger("gfd.lifecycle")

T = TypeVar("T")
# Within Kubernetes' default terminationGracePeriodSeconds (30 s): our deadline fires, and says what hung,
# before the kubelet's SIGKILL would.
STOP_DEADLINE_S = 20.0
EXIT_HUNG = 1
DEADLINE_MARGIN_S = 0.5
EXIT_GRACE_S = 1.0  # from a finished close to the end of the interpreter


def _guarded(call: Callable[[], None], scope: str) -> None:
    """An on_stop callback: one that fails (a bug) is logged with its traceback, and the stop goes on."""
    try:
        call()
    except Exception:
        log.exception("on_stop callback failed; the stop goes on", scope=scope, callback=repr(call))


def _thread(name: str, run: Callable[[], object]) -> threading.Thread:
    """The one place a thread is made: named, a daemon (it never keeps a hung process alive), and an
    uncaught exception logged once with its traceback instead of Python's stderr dump."""

    def guarded() -> None:
        try:
            run()
        except Exception:  # a bug in a long-lived loop: logged; the part's health check reports it gone
            log.exception("thread ended by an unexpected exception", thread=name)

    thread = threading.Thread(target=guarded, name=name, daemon=True)
    thread.start()
    return thread


class Scope:
    """Resources and threads entered in order, closed in reverse, threads joined within `deadline_s`."""

    def __init__(self, name: str, deadline_s: float = STOP_DEADLINE_S,
                 closed: Callable[[Scope], None] | None = None) -> None:
        self.name = name
        self._closed_callback = closed  # the parent's: told once this scope has closed everything
        self.deadline_s = deadline_s
        self.stopping = threading.Event()
        self.hung: list[str] = []  # the parts that did not stop in time
        self.closing = ""  # the part being closed now (for the deadline's message)
        self._stack = contextlib.ExitStack()
        self._threads: list[threading.Thread] = []
        self._on_stop: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._until = 0.0
        self._closed = False

    def enter(self, name: str, resource: AbstractContextManager[T]) -> T:
        """Enter `resource` now; it is exited when the scope closes (in reverse order of entering)."""
        value = resource.__enter__()
        self._stack.push(_Named(self, name, resource.__exit__))
        return value

    def callback(self, name: str, close: Callable[[], object]) -> None:
        """Call `close` when the scope closes (in reverse order)."""
        def exit_(*_exc: object) -> None:
            close()

        self._stack.push(_Named(self, name, exit_))

    def start_thread(self, name: str, run: Callable[[], object],
                     wake: Callable[[], None] | None = None) -> threading.Thread:
        """Run `run` on a thread named `name`; it must return once `stopping` is set (`wake`, if given, is
        called at the stop too: for a loop that waits on something else, a socket or a server). Joined when
        the scope closes."""
        thread = _thread(name, run)
        self._threads.append(thread)
        if wake is not None:
            self.on_stop(wake)
        self._stack.push(_Named(self, name, lambda *_exc: self._join(name, thread)))
        return thread

    def executor(self, name: str, workers: int) -> ThreadPoolExecutor:
        """A pool of at most `workers` threads named `name_N`, for work handed over by something that needs
        a pool (gRPC's servicers, the HTTP server's route handlers). When the scope closes the pool is shut
        down without waiting (queued work cancelled) and its threads are joined within the deadline, like
        any thread of the scope: one still running then is named as hung."""
        threads: list[threading.Thread] = []

        def started() -> None:  # on each new worker: the pool keeps no public list of its threads
            threads.append(threading.current_thread())
            self._threads.append(threads[-1])

        pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=started)

        def close(*_exc: object) -> None:
            pool.shutdown(wait=False, cancel_futures=True)
            for thread in list(threads):
                self._join(thread.name, thread)

        self._stack.push(_Named(self, name, close))
        return pool

    def on_stop(self, call: Callable[[], None]) -> None:
        """Call `call` (from the stopping thread) when the scope is stopped: waking a loop, cancelling API
        requests. At once if it is stopped already."""
        with self._lock:
            self._on_stop.append(call)
            stopped = self.stopping.is_set()
        if stopped:
            _guarded(call, self.name)

    def stop(self) -> None:
        """Set `stopping` and run the `on_stop` callbacks, once; what was started is closed by `close`."""
        with self._lock:
            if self.stopping.is_set():
                return
            self._until = time.monotonic() + self.deadline_s  # the deadline counts from the stop
            self.stopping.set()
            calls = list(self._on_stop)
        for call in calls:
            _guarded(call, self.name)

    def alive(self) -> list[str]:
        return [t.name for t in self._threads if t.is_alive()]

    def close(self) -> None:
        """Stop, then close everything in reverse order; idempotent."""
        self.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._stack.close()
        finally:
            self.closing = ""
            if self._closed_callback is not None:
                self._closed_callback(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _join(self, name: str, thread: threading.Thread) -> None:
        thread.join(max(0.0, self._until - time.monotonic()))
        if thread.is_alive():
            self.hung.append(name)
            log.error("did not stop in time; leaving it", part=name, scope=self.name, deadline_s=self.deadline_s)


class _Named:
    """An exit callback that records which part is closing, for the deadline's message."""

    def __init__(self, scope: Scope, name: str, exit_: Callable[..., object]) -> None:
        self.scope, self.name, self.exit_ = scope, name, exit_

    def __call__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self.scope.closing = self.name
        self.exit_(exc_type, exc, tb)
        return False  # never swallows the exception being handled


class Lifecycle(Scope):
    """The program's scope: its stop, its deadline, and the child scopes of its runs. `main` names what
    the program's own thread does until it returns (for the deadline's message)."""

    def __init__(self, program: str, main: str = "main loop", deadline_s: float = STOP_DEADLINE_S) -> None:
        super().__init__(program, deadline_s)
        self.main = main
        self.finished = threading.Event()  # the program's thread has closed everything
        self.stop_reason = ""
        self._children: list[Scope] = []  # open child scopes; a closed one leaves (its hung parts stay here)
        self._stragglers: list[threading.Thread] = []  # hung threads of closed child scopes
        self._has_children_callback = False

    def stop(self, reason: str = "") -> None:
        """Request an orderly shutdown: `stopping` is set here and in every child scope and their
        `on_stop` callbacks run; the program's thread then leaves its loop and closes everything."""
        with self._lock:
            if self.stopping.is_set():
                return
            self.stop_reason = reason
            children = list(self._children)
        super().stop()
        for child in children:
            child.stop()

    def scope(self, name: str) -> Scope:
        """A child scope (one run of a program, closed at a reload, or with the program at the latest);
        stopped with the program. The children still open when the program closes are closed at the place
        of the first child scope: one callback for all of them, so a thousand reloads leave nothing behind."""
        child = Scope(name, self.deadline_s, closed=self._child_closed)
        with self._lock:
            first = not self._has_children_callback
            self._has_children_callback = True
            self._children.append(child)
            stopped = self.stopping.is_set()
        if first:
            self.callback("child scopes", self._close_children)
        if stopped:
            child.stop()
        return child

    def _close_children(self) -> None:
        with self._lock:
            children = list(self._children)
        for child in reversed(children):
            child.close()

    def _child_closed(self, child: Scope) -> None:
        with self._lock:
            self._children.remove(child)
            self.hung += [f"{child.name}: {part}" for part in child.hung]
            self._stragglers += [t for t in child._threads if t.is_alive()]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.finished.set()

    def exit_status(self, status: int) -> int:
        """The program's exit status: `status`, or EXIT_HUNG when a part did not stop in time."""
        with self._lock:
            hung = self.hung + [h for c in self._children for h in c.hung]
        return EXIT_HUNG if hung and status == 0 else status

    def still_running(self) -> list[str]:
        """What keeps the program from finishing: its main loop until it returns, the part being closed,
        and threads still alive (a closed run's hung ones too)."""
        with self._lock:
            scopes: list[Scope] = [*self._children, self]
            parts = [] if self._closed else [self.main]
            parts += [t.name for t in self._stragglers if t.is_alive()]
        for scope in scopes:
            parts += ([scope.closing] if scope.closing else []) + scope.alive()
        return list(dict.fromkeys(parts))

    def enforce_deadline(self) -> None:
        """For a real process (not a program run in a test's thread): once a stop is requested, a program
        that has not finished within `deadline_s` logs what is still running and exits EXIT_HUNG. One that
        finished but left a hung part behind exits EXIT_HUNG too, should that part keep the interpreter from
        exiting (a pool's worker is not a daemon thread: Python joins it at exit, forever if it hangs)."""
        def watch() -> None:
            self.stopping.wait()
            # A moment past the joins' own deadline, so that a hung thread is named by the close that left it.
            if not self.finished.wait(self.deadline_s + DEADLINE_MARGIN_S):
                log.error("shutdown did not finish in time; exiting", deadline_s=self.deadline_s,
                          still_running=self.still_running(), stop=self.stop_reason)
                os._exit(EXIT_HUNG)  # the deadline's whole point: what hung cannot be waited for
            if self.exit_status(0) == EXIT_HUNG:
                time.sleep(EXIT_GRACE_S)  # the process normally ends meanwhile, and this thread with it
                log.error("a part that did not stop keeps the process from exiting; exiting",
                          still_running=self.still_running())
                os._exit(EXIT_HUNG)

        _thread("shutdown-deadline", watch)  # not joined: it outlives the program's close by design
