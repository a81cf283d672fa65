"""gfd.lifecycle and gfd.signals: the order things close in, the deadline, and what a hung part does to the
process (a real process, wired exactly as the programs wire it: Lifecycle + signals.install)."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from gfd.lifecycle import EXIT_HUNG, Lifecycle, Scope

ROOT = Path(__file__).resolve().parent.parent


class Resource:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __enter__(self) -> Resource:
        self.log.append(f"open {self.name}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.log.append(f"close {self.name}")


def test_resources_and_threads_close_in_reverse_order_of_starting() -> None:
    log: list[str] = []
    with Scope("test") as scope:
        scope.enter("a", Resource("a", log))

        def loop(name: str) -> None:
            scope.stopping.wait()
            time.sleep(0.05 if name == "t1" else 0.0)  # t1 ends last, yet is joined after t2
            log.append(f"end {name}")

        scope.start_thread("t1", lambda: loop("t1"))
        scope.enter("b", Resource("b", log))
        scope.callback("c", lambda: log.append("close c"))
        scope.start_thread("t2", lambda: loop("t2"))
        assert scope.alive() == ["t1", "t2"]
    assert log[:2] == ["open a", "open b"]
    assert log[2:] == ["end t2", "close c", "close b", "end t1", "close a"]
    assert not scope.hung and not scope.alive()


def test_a_failed_start_closes_what_was_entered_before_it() -> None:
    log: list[str] = []
    try:
        with Scope("test") as scope:
            scope.enter("a", Resource("a", log))
            raise RuntimeError("the next part cannot start")
    except RuntimeError:
        pass
    assert log == ["open a", "close a"]


def test_a_thread_that_ignores_the_stop_is_named_and_left_at_the_deadline() -> None:
    life = Lifecycle("test", deadline_s=0.3)
    release = threading.Event()
    started = time.monotonic()
    with life:
        life.start_thread("stubborn", functools.partial(release.wait, 10))
        run = life.scope("run")
        run.start_thread("polite", functools.partial(run.stopping.wait))
        life.stop("test")
        assert run.stopping.is_set()  # a program's stop reaches its runs
    assert time.monotonic() - started < 1.0
    assert life.hung == ["stubborn"] and life.exit_status(0) == EXIT_HUNG and life.exit_status(2) == 2
    release.set()


def test_on_stop_callbacks_run_once_from_the_stopping_thread() -> None:
    life = Lifecycle("test")
    calls: list[str] = []
    life.on_stop(lambda: calls.append(threading.current_thread().name))
    def stop_twice() -> None:
        life.stop()
        life.stop()

    stopper = threading.Thread(target=stop_twice, name="stopper")
    stopper.start()
    stopper.join()
    life.on_stop(lambda: calls.append("late"))  # registered after the stop: called at once
    life.close()
    assert calls == ["stopper", "late"]


PROGRAM = """
import sys, threading, time
from gfd import logs, signals
from gfd.lifecycle import Lifecycle

logs.configure("json")
hang = sys.argv[1]
life = Lifecycle("hang-test", main="the test's main loop", deadline_s=1.0)
with life:
    signals.install(life, reload=lambda: None)
    life.start_thread("well-behaved", lambda: life.stopping.wait() and None)
    if hang == "thread":
        life.start_thread("stuck-part", lambda: time.sleep(60))
    if hang == "pool":
        running = threading.Event()
        life.executor("stuck-pool", 2).submit(lambda: running.set() or time.sleep(60))
        running.wait()
    print("ready", flush=True)
    life.stopping.wait()
    if hang == "main":
        time.sleep(60)
sys.exit(life.exit_status(0))
"""


def run_and_stop(hang: str) -> tuple[int, float, list[dict[str, object]]]:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, hang], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
        took = time.monotonic() - sent
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err
    return status, took, [json.loads(line) for line in err.splitlines()]


def test_a_clean_stop_exits_0_at_once() -> None:
    status, took, events = run_and_stop("nothing")
    assert status == 0 and took < 1.0
    assert [e["event"] for e in events] == ["Received signal, shutting down"]


def test_a_hung_thread_makes_the_process_exit_non_zero_within_its_deadline_naming_it() -> None:
    status, took, events = run_and_stop("thread")
    assert status == EXIT_HUNG and 0.9 < took < 2.0
    (hung,) = [e for e in events if e["level"] == "error"]
    assert hung["event"] == "did not stop in time; leaving it" and hung["part"] == "stuck-part"


def test_a_hung_main_loop_makes_the_process_exit_non_zero_within_its_deadline_naming_it() -> None:
    status, took, events = run_and_stop("main")
    assert status == EXIT_HUNG and 0.9 < took < 2.0
    (hung,) = [e for e in events if e["level"] == "error"]
    assert hung["event"] == "shutdown did not finish in time; exiting"
    assert hung["still_running"] == ["the test's main loop"] and hung["stop"] == "signal SIGTERM"


def test_a_failing_on_stop_callback_is_logged_and_the_stop_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    """Review of issue 22: one failing callback aborted the whole stop (later callbacks, child scopes)."""
    life = Lifecycle("test")
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug in a wake-up")

    life.on_stop(broken)
    life.on_stop(lambda: calls.append("after"))
    run = life.scope("run")
    run.on_stop(broken)
    run.on_stop(lambda: calls.append("child"))
    life.stop("test")
    assert calls == ["after", "child"] and run.stopping.is_set()
    life.close()
    assert capsys.readouterr().err.count("on_stop callback failed") == 2


def test_reloads_leave_nothing_behind_on_the_program() -> None:
    """Review of issue 22: each run's scope stayed on the program's exit stack (1 000 reloads: 1 001 Scopes
    alive, each holding its on_stop callbacks)."""
    life = Lifecycle("test")
    runs: list[weakref.ref[Scope]] = []
    with life:
        for _ in range(1000):
            with life.scope("run") as run:
                run.on_stop(lambda: None)
                run.start_thread("t", run.stopping.wait)
            runs.append(weakref.ref(run))
        del run
        gc.collect()
        assert [r for r in runs if r() is not None] == []


def test_a_part_hung_at_a_reload_is_remembered_until_the_program_exits() -> None:
    life = Lifecycle("test", deadline_s=0.2)
    release = threading.Event()
    with life:
        with life.scope("run") as run:
            run.start_thread("stuck", functools.partial(release.wait, 10))
        with life.scope("run"):
            pass  # the next run
        assert "stuck" in life.still_running()
    assert life.exit_status(0) == EXIT_HUNG
    release.set()


def test_a_hung_pool_worker_does_not_keep_the_process_alive() -> None:
    """A pool's worker is not a daemon thread: Python's exit would join it forever."""
    status, took, events = run_and_stop("pool")
    assert status == EXIT_HUNG and 1.9 < took < 3.5
    assert [(e["event"], e.get("part")) for e in events if e["level"] == "error"] == [
        ("did not stop in time; leaving it", "stuck-pool_0"),
        ("a part that did not stop keeps the process from exiting; exiting", None)]


def test_a_pool_is_shut_down_and_its_threads_joined_when_its_scope_closes() -> None:
    started, release = threading.Event(), threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(10)

    with Scope("test", deadline_s=0.3) as scope:
        pool = scope.executor("work", 1)
        assert pool.submit(lambda: 7).result(5) == 7
        pool.submit(stuck)
        queued = pool.submit(lambda: 8)  # behind the stuck one: cancelled at the close
        started.wait(5)
    assert queued.cancelled() and scope.hung == ["work_0"]
    release.set()
    with Scope("test") as scope:
        pool = scope.executor("work", 4)
        list(pool.map(time.sleep, [0.05] * 8))
    assert not scope.hung and not scope.alive()
