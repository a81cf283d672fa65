"""Talking to an MPS control daemon through `nvidia-cuda-mps-control`, as upstream does: `-d` starts the
daemon; without it the program reads commands on stdin and relays them through the pipe directory.
Commands and answers: NVIDIA's MPS documentation, "nvidia-cuda-mps-control" (e.g. `quit`,
`set_default_device_pinned_mem_limit <dev> <value>`, `set_default_active_thread_percentage <pct>`,
`get_default_active_thread_percentage`)."""

from __future__ import annotations

import os
import subprocess

from plugin.mps import MpsError
from plugin.mps.root import MpsRoot

CONTROL = "nvidia-cuda-mps-control"
TIMEOUT_S = 10.0


class ControlError(MpsError):
    pass


def environment(root: MpsRoot, resource: str) -> dict[str, str]:
    return {"CUDA_MPS_PIPE_DIRECTORY": root.pipe_dir(resource), "CUDA_MPS_LOG_DIRECTORY": root.log_dir(resource)}


def start_daemon(root: MpsRoot, resource: str, visible: list[str]) -> None:
    """`nvidia-cuda-mps-control -d`: returns once the daemon has forked into the background."""
    _run(["-d"], root, resource, "", {"CUDA_VISIBLE_DEVICES": ",".join(visible)})


def send(root: MpsRoot, resource: str, command: str) -> str:
    """One command through the control pipe; the daemon's answer."""
    return _run([], root, resource, command + "\n")


def answers(root: MpsRoot, resource: str) -> str | None:
    """None when the resource's daemon answers a harmless query (upstream's AssertHealthy), else why not."""
    try:
        send(root, resource, "get_default_active_thread_percentage")
    except ControlError as e:
        return str(e)
    return None


def _run(args: list[str], root: MpsRoot, resource: str, stdin: str, extra: dict[str, str] | None = None) -> str:
    env = {**os.environ, **environment(root, resource), **(extra or {})}
    what = " ".join([CONTROL, *args]) + (f" <<< {stdin.strip()!r}" if stdin else "")
    try:
        proc = subprocess.run([CONTROL, *args], input=stdin, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ControlError(f"{CONTROL} not found on PATH (it comes with the driver; is the container's "
                           "NVIDIA_DRIVER_CAPABILITIES 'compute,utility'?)") from None
    except subprocess.TimeoutExpired:
        raise ControlError(f"{what}: no answer in {TIMEOUT_S:.0f}s") from None
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ControlError(f"{what}: exit {proc.returncode}{': ' + output[-1] if output else ''}")
    return proc.stdout
