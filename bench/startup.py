"""Start-up cost of the programs as processes, on NVIDIA's mock NVML (../shared/nvml-mock, 8x A100): the import
floor, our programs' imports, and the device plugin's process start -> first Register on the kubelet stand-in
(tests/kubelet.py), without and with a metrics address (its HTTP server imports h11).

Each figure is wall time and CPU time (user + system; the steadier one on a shared machine), medians and ranges
of interleaved runs, so that the machine's noise hits every case alike. `--compare DIR` runs every case also
with another checkout's code (PYTHONPATH=DIR, e.g. a `git archive` of the previous release), interleaved with
ours, and prints the median of the paired ratios (each side's code comes from PYTHONPATH, run from a directory
of its own, so that `python -c` does not pick up the current directory's).
`--instructions` also counts the instructions each import case executes (valgrind's callgrind, once each): a
figure that the machine's load does not move at all.
Run: python -m bench.startup [--runs 11] [--compare DIR] [--instructions]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import cpu_seconds, machine
from tests.kubelet import KubeletStandIn

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MOCK_ENV = {"LD_LIBRARY_PATH": str(SHARED / "nvml-mock"),
            "MOCK_NVML_CONFIG": str(SHARED / "nvml-mock" / "configs" / "mock-nvml-config-a100.yaml")}
PLUGIN = str(Path(sys.executable).parent / "nvidia-device-plugin")
# The third-party modules the device plugin imports at every start (grpc imports asyncio itself): the floor
# our own code is measured against.
FLOOR = "import structlog, yaml, pynvml, grpc, prometheus_client; from google.protobuf.internal import builder"
IMPORTS = {"interpreter (python -c pass)": "pass", f"import floor ({FLOOR})": FLOOR,
           "import plugin.cli": "import plugin.cli", "import gfd.cli": "import gfd.cli"}
PLUGIN_CASES = {"plugin start -> first Register": (),
                "the same with --metrics-address": ("--metrics-address=127.0.0.1:0",)}
Sample = tuple[float, float, float]  # wall s, CPU s, RSS MiB
Case = Callable[[], Sample]


def plugin_to_register(tmp: str, env: dict[str, str], *flags: str) -> Sample:
    """From the process's start to its first Register on the kubelet stand-in: wall and CPU seconds, and the
    RSS then."""
    directory = os.path.join(tempfile.mkdtemp(dir=tmp), "device-plugins")
    os.makedirs(directory)
    kubelet = KubeletStandIn(directory)
    try:
        start = time.monotonic()
        proc = subprocess.Popen([PLUGIN, f"--kubelet-socket={kubelet.socket}", *flags], env={**env, **MOCK_ENV},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            registered = kubelet.registered("nvidia.com/gpu", timeout=30).at - start
            cpu = cpu_seconds(proc.pid)
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        finally:
            proc.terminate()
            proc.wait()
    finally:
        kubelet.stop()
    return registered, cpu, rss


def import_usage(code: str, env: dict[str, str], cwd: str) -> Sample:
    """`python -c code` to completion: wall and CPU seconds (wait4), and the peak RSS the child read itself
    (wait4's ru_maxrss would count this process's memory: the child is forked from it before exec)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nprint(open('/proc/self/status').read())"], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    status_file = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} exited {proc.returncode}")
    peak = next(int(line.split()[1]) / 1024 for line in status_file.splitlines() if line.startswith("VmHWM:"))
    return wall, usage.ru_utime + usage.ru_stime, peak


def instructions(code: str, env: dict[str, str], cwd: str) -> int:
    """Instructions `python -c code` executes, counted by valgrind (about 50x slower than running it)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                           code], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return int(next(line for line in proc.stderr.splitlines() if "Collected :" in line).split()[-1])


def cases(tmp: str, env: dict[str, str], tag: str = "") -> dict[str, Case]:
    out: dict[str, Case] = {}
    for name, code in IMPORTS.items():
        out[name + tag] = functools.partial(import_usage, code, env, tmp)
    for name, flags in PLUGIN_CASES.items():
        out[name + tag] = functools.partial(plugin_to_register, tmp, env, *flags)
    return out


def summary(samples: list[Sample]) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"

    return (f"wall {ms([s[0] for s in samples])}, CPU {ms([s[1] for s in samples])}, "
            f"RSS {statistics.median(s[2] for s in samples):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--compare", metavar="DIR", help="another checkout to run interleaved with this one")
    parser.add_argument("--instructions", action="store_true", help="count the import cases' instructions too")
    args = parser.parse_args()
    other_tag = f" [{args.compare}]"
    with tempfile.TemporaryDirectory() as tmp:
        envs = {"": {**os.environ, "PYTHONPATH": str(ROOT)}}
        if args.compare:
            envs[other_tag] = {**os.environ, "PYTHONPATH": args.compare}
        everything = {name: case for tag, env in envs.items() for name, case in cases(tmp, env, tag).items()}
        samples: dict[str, list[Sample]] = {name: [] for name in everything}
        for _ in range(args.runs):
            for name, case in everything.items():
                samples[name].append(case())
        counted = {name + tag: instructions(code, env, tmp) for name, code in IMPORTS.items()
                   for tag, env in envs.items()} if args.instructions else {}
    print(f"machine: {machine()}")
    print(f"NVIDIA's mock NVML, 8x A100 ({MOCK_ENV['MOCK_NVML_CONFIG']}); {args.runs} interleaved runs")
    for name in (n for n in everything if not (args.compare and n.endswith(other_tag))):
        count = f", {counted[name] / 1e6:.0f} M instructions" if name in counted else ""
        print(f"{name}: {summary(samples[name])}{count}")
        if args.compare:
            theirs = samples[name + other_tag]
            wall, cpu = (statistics.median(a[i] / b[i] for a, b in zip(samples[name], theirs, strict=True))
                         for i in (0, 1))
            count = f", {counted[name + other_tag] / 1e6:.0f} M instructions" if name in counted else ""
            print(f"    {args.compare}: {summary(theirs)}{count}; ours / theirs: wall {wall:.2f}x, CPU {cpu:.2f}x")
    print("upstream's Go device plugin, start -> registered on one fake NVML: 47-153 ms (issue 21); target <= 2x")


if __name__ == "__main__":
    main()
