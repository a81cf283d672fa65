"""Oneshot and per-pass cost of GFD on the 8x A100 80GB mixed-MIG simulated profile.

Prints: the bare import floor of our dependencies, the oneshot's whole-process wall time and peak
RSS (medians), the in-process cost of one labelling pass and the NVML calls it makes.
Run: python -m bench.oneshot [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.common import machine, paired

PROFILE = "a100-80gb-mig-mixed"


def in_process_pass(passes: int) -> tuple[float, float, int]:
    from gfd import logs
    from gfd.config import load_config, parse_command_line
    from gfd.discovery.session import NodeSource
    from gfd.labelling import oneshot_labels

    logs.configure("json", level=40)
    config = load_config(parse_command_line(["--simulate", PROFILE, "--mig-strategy=mixed"], {}))
    with NodeSource.for_gfd(config) as source:
        simulation = source.simulation
        assert simulation is not None
        wall, cpu = [], []
        for _ in range(passes):
            before = simulation.library.calls.total()
            t0, c0 = time.perf_counter(), time.process_time()
            oneshot_labels(source, config, 0)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            calls = simulation.library.calls.total() - before
        return statistics.median(wall), statistics.median(cpu), calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--passes", type=int, default=300)
    args = parser.parse_args()
    floor = [sys.executable, "-c", "import pynvml, yaml, structlog"]
    oneshot = [sys.executable, "-m", "gfd", "--oneshot", "--no-timestamp", "--output-file=-",
               f"--simulate={PROFILE}", "--mig-strategy=mixed"]
    r = paired(floor, oneshot, args.runs)
    pass_wall, pass_cpu, calls = in_process_pass(args.passes)
    print(f"machine: {machine()}")
    print(f"profile: {PROFILE} (8 GPUs, 28 MIG devices); medians of {args.runs} interleaved runs, "
          f"{args.passes} passes")
    print(f"import floor (python -c 'import pynvml, yaml, structlog'): {r['base_wall'] * 1000:.1f} ms, "
          f"{r['base_rss']:.1f} MiB peak RSS")
    print(f"oneshot wall: {r['wall'] * 1000:.1f} ms; median ratio to the floor {r['ratio']:.2f}x (target <= 1.3x)")
    print(f"oneshot peak RSS: {r['rss']:.1f} MiB median, {r['max_rss']:.1f} MiB max "
          "(target <= 36 MiB, upstream Go binary)")
    print(f"one labelling pass in-process: {pass_wall * 1000:.3f} ms wall, {pass_cpu * 1000:.3f} ms CPU "
          f"(upstream: 2.3 ms CPU per pass)")
    print(f"NVML calls per pass: {calls}")


if __name__ == "__main__":
    main()
