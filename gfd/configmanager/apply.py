"""Edges of the config manager: point CONFIG_FILE_DST at the chosen file, signal the main process."""

from __future__ import annotations

import os
import signal

import structlog

from gfd.configmanager.selection import EMPTY
from plugin.telemetry.cgroups import read_owner

log = structlog.get_logger("config-manager")


def link_target(srcdir: str, name: str) -> str:
    return "/dev/null" if name == EMPTY else os.path.join(srcdir, name)


def current_target(dst: str) -> str | None:
    try:
        return os.readlink(dst)
    except OSError:
        return None


def point(dst: str, target: str) -> bool:
    """Atomically make `dst` a symlink to `target`; False when it already was."""
    if current_target(dst) == target:
        log.info("Already configured. Skipping update...", target=target)
        return False
    tmp = f"{dst}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, dst)
    log.info("Updated config", file=dst, target=target)
    return True


def find_pid(process: str, proc: str = "/proc") -> int:
    """The process running `process`, sharing our PID namespace: its argv[0], or, for a console script
    run by an interpreter (`/usr/bin/python3 /usr/local/bin/gpu-feature-discovery …`, as every Python
    entry point runs), the script after it. Never matches a process that only mentions the name. In a pod,
    only a process of our own pod (its cgroup names our pod's UID): with hostPID (the MPS DaemonSet, the DRA
    driver's pod) every process of the node is in our namespace, a tenant's of that name too."""
    target = os.path.basename(process)  # the chart names some by path (/usr/bin/mps-control-daemon)
    ours = read_owner(proc, os.getpid())
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(a.decode(errors="replace")) for a in argv[:2]]
        if names[0] == target or (names[0].startswith("python") and len(names) > 1 and names[1] == target):
            owner = read_owner(proc, int(entry)) if ours is not None else None
            if ours is None or (owner is not None and owner.pod_uid == ours.pod_uid):
                return int(entry)
    raise LookupError(f"error finding pid: no process found running {process!r}")


def send(process: str, signum: int) -> None:
    pid = find_pid(process)
    os.kill(pid, signum)
    log.info("Sent signal", signal=signal.Signals(signum).name, process=process, pid=pid)
