"""Steady-state cost of the GFD daemon on the 8x A100 80GB mixed-MIG simulated profile.

Prints: CPU time and NVML calls per cycle, daemon RSS in file mode after 100 and 1000 cycles, and
Kubernetes API requests per node-hour in NodeFeature mode when nothing changes.
Run: python -m bench.daemon
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench.common import machine

PROFILE = ["--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed"]


def cpu_per_cycle(cycles: int) -> tuple[float, float, float]:
    from gfd import logs
    from gfd.config import load_config, parse_command_line
    from gfd.daemon import Daemon

    logs.configure("json", level=40)
    with tempfile.TemporaryDirectory() as tmp:
        cmdline = parse_command_line([*PROFILE, "--use-node-feature-api=false", f"-o={tmp}/gfd"], {})
        daemon = Daemon(cmdline, load_config(cmdline))
        run = daemon._start_run(daemon.config)
        assert run.source.simulation is not None
        calls = run.source.simulation.library.calls
        daemon.cycle(run)  # the first cycle discovers everything and writes
        cpu, per_cycle_calls = [], []
        for _ in range(cycles):
            before, c0 = calls.total(), time.process_time()
            daemon.cycle(run)
            cpu.append(time.process_time() - c0)
            per_cycle_calls.append(calls.total() - before)
        first_read = _full_read_calls(run)
        daemon._finish(run, remove=True)
    return statistics.median(cpu), statistics.median(per_cycle_calls), first_read


def _full_read_calls(run: object) -> float:
    from gfd.discovery.nvml import NvmlReader

    source = run.source  # type: ignore[attr-defined]
    calls = source.simulation.library.calls
    before = calls.total()
    source.reader = NvmlReader()  # a fresh reader re-discovers everything, as upstream does every pass
    source.read()
    return float(calls.total() - before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return 0.0


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rss_after_cycles(checkpoints: list[int]) -> list[float]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "gfd", *PROFILE, "--use-node-feature-api=false",
                                 f"-o={tmp}/gfd", "--sleep-interval=10ms", f"--metrics-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = []
            for target in checkpoints:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if _metric(port, 'gfd_cycles_total{result="success"}') >= target:
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("daemon too slow")
                    time.sleep(0.05)
                out.append(_rss_mib(proc.pid))
            return out
        finally:
            proc.terminate()
            proc.wait()


def api_requests_per_hour(cycles: int) -> tuple[float, float, int]:
    """NodeFeature mode against the loopback API server, with time scaled: one cycle stands for the
    default 60 s interval and the resync period for the default hour (60 cycles)."""
    from gfd import logs
    from gfd.config import load_config, parse_command_line
    from gfd.daemon import Daemon
    from tests.apiserver import FakeApiServer

    logs.configure("json", level=40)
    interval_s = 0.01
    server = FakeApiServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = server.kubeconfig(tmp + "/k")
            cmdline = parse_command_line([*PROFILE, "--node-name=node1", f"--kubeconfig={kubeconfig}",
                                          f"--node-feature-resync={interval_s * 60 * 1000:.0f}ms"], {})
            daemon = Daemon(cmdline, load_config(cmdline))
            run = daemon._start_run(daemon.config)
            daemon.cycle(run)
            server.clear_requests()
            start = time.monotonic()
            for n in range(cycles):
                daemon.cycle(run)
                time.sleep(max(0.0, start + (n + 1) * interval_s - time.monotonic()))
            hours = cycles / 60
            reads = len(server.requests("GET")) / hours
            writes = (len(server.requests("PUT")) + len(server.requests("POST"))) / hours
            daemon._finish(run, remove=True)
            return reads, writes, cycles
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--api-cycles", type=int, default=1200)
    args = parser.parse_args()
    cpu, calls, full = cpu_per_cycle(args.cycles)
    rss = rss_after_cycles([100, 1000])
    reads, writes, api_cycles = api_requests_per_hour(args.api_cycles)
    print(f"machine: {machine()}")
    print(f"profile: {' '.join(PROFILE)} (8 GPUs, 28 MIG devices)")
    print(f"CPU per steady-state cycle: {cpu * 1000:.3f} ms median of {args.cycles} (upstream: 2.3 ms per pass)")
    print(f"NVML calls per steady-state cycle: {calls:.0f} (a full re-discovery: {full:.0f})")
    print(f"daemon RSS, file mode: {rss[0]:.1f} MiB after 100 cycles, {rss[1]:.1f} MiB after 1000 "
          f"(growth {rss[1] - rss[0]:+.2f} MiB; targets <= 45 MiB, growth <= 1 MiB)")
    print(f"API requests per node-hour with nothing changing: {reads:.2f} reads, {writes:.2f} writes "
          f"({api_cycles} cycles at a 60 s interval scale, 1 h resync; upstream: 60 GETs)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
