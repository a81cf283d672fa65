"""GPU telemetry cost: per collection (NVML calls, CPU time), scrape latency over HTTP, RSS added.

Two simulated nodes, each with 50 pods holding devices through a kubelet stand-in's PodResources API:
8 A100s (50 pods on time-slicing replicas) and 8 A100s split into 7 MIG devices each (50 of the 56 held).
Scrapes read the prepared snapshot, so their latency is the HTTP server's and the text encoding's.
Run: python -m bench.telemetry
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request

from bench.common import machine
from gfd.discovery.session import NodeSource
from gfd.httpserver import Health, serve
from gfd.lifecycle import Scope
from plugin.telemetry.collector import TelemetryCollector
from tests.helpers import free_port
from tests.kubelet import KubeletStandIn

DEFAULT_INTERVAL_S = 10.0


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(profile: str, collections: int, scrapes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="k-", dir="/tmp") as tmp, NodeSource("nvml", profile) as source:
        os.makedirs(os.path.join(tmp, "device-plugins"))
        kubelet = KubeletStandIn(os.path.join(tmp, "device-plugins"))
        source.open()
        model = source.read()
        devices = [m.uuid for m in model.mig_devices] or [f"{g.uuid}::{i}" for g in model.gpus for i in range(7)]
        with kubelet.changed:
            for i, device in enumerate(devices[:50]):
                kubelet.assigned[("bench", f"pod-{i}", "main")] = ("nvidia.com/gpu", [device])
        before = rss_mib()
        collector = TelemetryCollector(lambda: model, DEFAULT_INTERVAL_S, kubelet.pod_resources_socket, "bench",
                                       xids=True)
        assert source.simulation is not None
        calls = source.simulation.library.calls
        cpu, wall, nvml = [], [], []
        for _ in range(collections):
            n, c, w = sum(calls.values()), time.process_time(), time.perf_counter()
            collector.collect_once()
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
            nvml.append(sum(calls.values()) - n)
        port = free_port()
        latencies = []
        size = 0
        with Scope("bench") as scope:
            serve(scope, f"127.0.0.1:{port}", collector.render, lambda: Health(True, "ok"))
            for _ in range(scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                    size = len(r.read())
                latencies.append(time.perf_counter() - t)
        added = rss_mib() - before
        kubelet.stop()
        series = sum(len(m.samples) for m in collector.snapshot)
    return {"nvml": statistics.median(nvml), "cpu_ms": statistics.median(cpu) * 1000,
            "wall_ms": statistics.median(wall) * 1000, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "series": series, "bytes": size, "rss": added}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args()
    print(machine())
    for name, profile in (("8 GPUs, 50 pods", "dgx-a100"), ("8 GPUs x 7 MIG, 50 pods", "a100-mig-single")):
        r = measure(profile, args.collections, args.scrapes)
        share = r["cpu_ms"] / 1000 / DEFAULT_INTERVAL_S * 100
        print(f"{name}: per collection {r['nvml']:.0f} NVML calls, CPU {r['cpu_ms']:.1f} ms (median; "
              f"{share:.2f} % of a core at {DEFAULT_INTERVAL_S:.0f} s), wall {r['wall_ms']:.1f} ms; "
              f"{r['series']:.0f} series, {r['bytes'] / 1024:.0f} KiB per scrape; scrape p50 {r['p50']:.2f} ms, "
              f"p99 {r['p99']:.2f} ms; RSS added {r['rss']:.1f} MiB")


if __name__ == "__main__":
    main()
