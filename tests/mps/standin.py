"""What the MPS tests read of the stand-in `nvidia-cuda-mps-control` (this folder, put on PATH as the real
one is found): its daemon's PID, its log, its servers, whether a process is gone, and the faults it takes; and a
root for its daemons that ends with them."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STAND_IN = Path(__file__).resolve().parent
FAULTS = "MPS_STAND_IN_FAULTS"  # read by the stand-in daemon from its environment (see its docstring)


def path_with_stand_in() -> str:
    return f"{STAND_IN}{os.pathsep}{os.environ['PATH']}"


def daemon_pid(pipe_dir: Path) -> int | None:
    try:
        return int((pipe_dir / "nvidia-cuda-mps-control.pid").read_text())
    except (OSError, ValueError):
        return None


def control_log(log_dir: Path) -> str:
    path = log_dir / "control.log"
    return path.read_text() if path.exists() else ""


def commands(log_dir: Path) -> list[str]:
    """The commands the daemon received, in order."""
    return [line.split("Cmd:", 1)[1] for line in control_log(log_dir).splitlines() if "Cmd:" in line]


def gone(pid: int) -> bool:
    """Exited (perhaps not reaped yet by whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Until `pid` has exited (a signal is delivered, not waited for)."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still running after {timeout} s"
        time.sleep(0.01)


def kill_daemon(pipe_dir: Path) -> None:
    """What a test left running: the daemon and its servers (its process group)."""
    pid = daemon_pid(pipe_dir)
    if pid is not None and not gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def daemons_root() -> Iterator[Path]:
    """A short directory for MPS daemons' files (a unix socket's path has at most 107 bytes, as for the real MPS);
    at the end the daemons under it are killed, whatever a test left, and it is removed."""
    with tempfile.TemporaryDirectory(prefix="mps-", dir="/tmp", ignore_cleanup_errors=True) as d:
        try:
            yield Path(d)
        finally:
            for entry in Path(d).iterdir():
                kill_daemon(entry / "pipe")
