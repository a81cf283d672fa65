"""Talking to an MPS control daemon through `nvidia-cuda-mps-control`, as upstream does: `-d` starts the
daemon; without it the program reads commands on stdin and relays them through the pipe directory.
Commands and answers: NVIDIA's MPS documentation, "nvidia-cuda-mps-control" (e.g. `quit`,
`set_default_device_pinned_mem_limit <dev> <value>`, `set_default_active_thread_percentage <pct>`,
`get_default_active_thread_percentage`).

Every run is bounded: a deadline for the whole exchange, at most MAX_ANSWER_BYTES kept of what the program
prints (our commands are answered with a number or a short list; more is a fault, and the program is killed).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from plugin.mps import MpsError
from plugin.mps.root import MpsRoot

CONTROL = "nvidia-cuda-mps-control"
ANSWER_TIMEOUT_S = 10.0
# The harmless query that tells whether a daemon answers (upstream's AssertHealthy); the daemon logs it as
# `Cmd:<query>`, which our copy of its log leaves out (plugin/mps/daemon.py LogTail).
PROBE = "get_default_active_thread_percentage"
MAX_ANSWER_BYTES = 64 * 1024
# After the program has exited, how long what it left behind (the daemon `-d` forked) may keep its output
# pipes open before we stop reading them.
EXITED_GRACE_S = 0.1
READ_BYTES = 64 * 1024


NOT_FOUND = (f"{CONTROL} not found on PATH (it comes with the driver; is the container's "
             "NVIDIA_DRIVER_CAPABILITIES 'compute,utility'?)")


class ControlError(MpsError):
    pass


def find_control() -> str:
    """Where `nvidia-cuda-mps-control` is on PATH (checked before a GPU is touched); ControlError when it is
    not there or cannot be run."""
    path = shutil.which(CONTROL)
    if path is not None:
        return os.path.abspath(path)
    present = shutil.which(CONTROL, mode=os.F_OK)
    if present is not None:
        raise ControlError(f"{present} is not executable")
    raise ControlError(NOT_FOUND)


@dataclass(frozen=True)
class Control:
    """`program` (nvidia-cuda-mps-control, by path or found on PATH) speaking to the daemon of one pipe
    directory, the daemon logging to `log_dir`; `env`: what the program's environment adds (a driver root's
    programs and libraries, when the program is not the system's)."""

    pipe_dir: str
    log_dir: str
    program: str = CONTROL
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def under(cls, root: MpsRoot, name: str, program: str = CONTROL, env: Mapping[str, str] | None = None) -> Control:
        return cls(root.pipe_dir(name), root.log_dir(name), program, env or {})

    def environment(self) -> dict[str, str]:
        return {**self.env, "CUDA_MPS_PIPE_DIRECTORY": self.pipe_dir, "CUDA_MPS_LOG_DIRECTORY": self.log_dir}

    def start_daemon(self, visible: Sequence[str]) -> None:
        """`nvidia-cuda-mps-control -d` serving the GPUs `visible` (UUIDs): returns once the daemon has forked
        into the background. Its own process group: what it leaves running can be signalled as one."""
        self._run(["-d"], "", ANSWER_TIMEOUT_S, {"CUDA_VISIBLE_DEVICES": ",".join(visible)})

    def send(self, command: str, timeout_s: float = ANSWER_TIMEOUT_S) -> str:
        """One command through the control pipe; the daemon's answer."""
        return self._run([], command + "\n", timeout_s)

    def answers(self, timeout_s: float = ANSWER_TIMEOUT_S) -> str | None:
        """None when the daemon answers PROBE within `timeout_s`, else why not."""
        try:
            self.send(PROBE, timeout_s)
        except ControlError as e:
            return str(e)
        return None

    def _run(self, args: list[str], stdin: str, timeout_s: float, extra: dict[str, str] | None = None) -> str:
        env = {**os.environ, **self.environment(), **(extra or {})}
        what = " ".join([CONTROL, *args]) + (f" <<< {stdin.strip()!r}" if stdin else "")
        deadline = time.monotonic() + timeout_s
        try:
            proc = subprocess.Popen([self.program, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except FileNotFoundError as e:
            raise ControlError(NOT_FOUND if self.program == CONTROL else f"{self.program} not found") from e
        except OSError as e:
            raise ControlError(f"{what}: cannot run {self.program}: {e.strerror}") from e
        try:
            out, err = _bounded_output(proc, stdin.encode(), deadline)
            status = proc.wait(max(0.0, deadline - time.monotonic()))
        except _TooLong as e:
            _kill_group(proc)
            raise ControlError(f"{what}: answered more than {MAX_ANSWER_BYTES // 1024} KiB") from e
        except subprocess.TimeoutExpired as e:
            _kill_group(proc)
            raise ControlError(f"{what}: no answer in {timeout_s:g}s") from e
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if status != 0:
            lines = (err.strip() or out.strip()).splitlines()
            raise ControlError(f"{what}: exit {status}{': ' + lines[-1][:200] if lines else ''}")
        return out


def not_ready(root: MpsRoot, name: str, program: str = CONTROL, env: Mapping[str, str] | None = None) -> str | None:
    """Why the daemon `name` under `root` cannot serve clients now, or None: it has signalled readiness
    (`.started`, written once its limits are set) and answers."""
    if not os.path.exists(root.started(name)):
        return "the MPS control daemon has not signalled readiness"
    return Control.under(root, name, program, env).answers()


class _TooLong(Exception):
    pass


def _bounded_output(proc: subprocess.Popen[bytes], stdin: bytes, deadline: float) -> tuple[str, str]:
    """What `proc` prints on stdout and stderr until both end or, once it has exited, EXITED_GRACE_S later
    (what still holds the pipes then is a process it left behind: the daemon `-d` forked). TimeoutExpired
    past `deadline`, _TooLong beyond MAX_ANSWER_BYTES on either."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    with contextlib.suppress(BrokenPipeError):  # a program that exits without reading its command
        proc.stdin.write(stdin)  # a command line: far below a pipe's buffer, so this never blocks
        proc.stdin.close()
    received = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    exited = False
    with selectors.DefaultSelector() as selector:
        for fd in received:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            if not exited and proc.poll() is not None:
                exited = True
                deadline = min(deadline, time.monotonic() + EXITED_GRACE_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if exited:
                    break
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in selector.select(min(remaining, EXITED_GRACE_S)):
                data = os.read(key.fd, READ_BYTES)
                if not data:
                    selector.unregister(key.fd)
                    continue
                received[key.fd] += data
                if len(received[key.fd]) > MAX_ANSWER_BYTES:
                    raise _TooLong
    out, err = (bytes(received[f.fileno()]).decode(errors="replace") for f in (proc.stdout, proc.stderr))
    return out, err


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The control program and anything it started in its session (it was started in a new one)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)
