"""Helpers for the benchmarks: child-process wall time and peak RSS, medians, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time


def run_child(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command to completion; (wall seconds, peak RSS MiB) from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired(baseline: list[str], subject: list[str], runs: int) -> dict[str, float]:
    """Alternate baseline and subject runs so machine noise hits both; medians and the median ratio."""
    base, subj = [], []
    for _ in range(runs):
        base.append(run_child(baseline))
        subj.append(run_child(subject))
    return {
        "base_wall": statistics.median(b[0] for b in base),
        "base_rss": statistics.median(b[1] for b in base),
        "wall": statistics.median(s[0] for s in subj),
        "rss": statistics.median(s[1] for s in subj),
        "max_rss": max(s[1] for s in subj),
        "ratio": statistics.median(s[0] / b[0] for s, b in zip(subj, base, strict=True)),
    }


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {platform.platform()}"
