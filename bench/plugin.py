"""Device plugin figures over its real gRPC unix socket, beside the client's own floor.

Prints: p50/p99 of an empty GetDevicePluginOptions call (the floor) and of Allocate (1 and 4 devices),
GetPreferredAllocation quality (score vs the exhaustive optimum) and latency on 8 and 16 GPUs for every
size, XID-to-ListAndWatch latency, kubelet-restart-to-re-registration time, and plugin RSS.
Run: python -m bench.plugin
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from bench.common import machine
from plugin.api import api_pb2
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config
from plugin.preferred import set_score
from tests.kubelet import KubeletStandIn


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def sixteen_gpu_profile(path: str, seed: int = 7) -> None:
    """16 H100s with a seeded random NVLink/PCIe topology: a harder search than any real machine."""
    rng = random.Random(seed)
    nvlink = [[a, b, rng.choice([0, 0, 1, 2, 4])] for a in range(16) for b in range(a + 1, 16)]
    with open(path, "w") as f:
        yaml.safe_dump({"description": "16 GPUs, random topology", "gpus": [{"model": "H100-80GB-HBM3", "count": 16}],
                        "topology": {"nvlink": [x for x in nvlink if x[2]],
                                     "pcie": {"default": "system", "node": [list(range(8)), list(range(8, 16))],
                                              "single": [[i, i + 1] for i in range(0, 16, 2)]}}}, f)


class Harness:
    def __init__(self, tmp: str, *argv: str) -> None:
        directory = os.path.join(tmp, "dp")
        os.makedirs(directory)
        self.kubelet = KubeletStandIn(directory)
        args = [f"--kubelet-socket={self.kubelet.socket}", "--log-format=json", *argv]
        self.plugin = DevicePlugin(args, {}, load_plugin_config(args, {}))
        self.thread = threading.Thread(target=self.plugin.run, daemon=True)
        self.thread.start()
        self.registration = self.kubelet.registered("nvidia.com/gpu", timeout=30)

    def close(self) -> None:
        self.plugin.stop()
        self.thread.join(10)
        self.kubelet.stop()


def latency(h: Harness, n: int) -> None:
    stub = h.registration.stub
    ids = [d.ID for d in h.registration.devices]
    floor = timed(lambda: stub.GetDevicePluginOptions(api_pb2.Empty()), n)
    print(f"floor, empty GetDevicePluginOptions: p50 {pct(floor, .5):.3f} ms, p99 {pct(floor, .99):.3f} ms")
    for k in (1, 4):
        request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids[:k])])
        samples = timed(functools.partial(stub.Allocate, request), n)
        print(f"Allocate {k} device(s): p50 {pct(samples, .5):.3f} ms, p99 {pct(samples, .99):.3f} ms "
              f"= {pct(samples, .99) / pct(floor, .99):.2f}x the floor's p99 (target <= 2x)")


def preferred_quality(h: Harness, label: str, repeats: int) -> None:
    stub = h.registration.stub
    uuids = [d.ID for d in h.registration.devices]
    assert h.plugin.current is not None
    scores = h.plugin.current.registrar.servers[0].service.scores
    n = len(uuids)
    samples, optimal, cases = [], 0, 0
    for size in range(1, n + 1):
        request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=uuids, allocation_size=size)])
        samples += timed(functools.partial(stub.GetPreferredAllocation, request), repeats)
        got = list(stub.GetPreferredAllocation(request).container_responses[0].deviceIDs)
        best = max(set_score(c, scores) for c in itertools.combinations(range(n), size))
        optimal += set_score([uuids.index(g) for g in got], scores) == best
        cases += 1
    print(f"GetPreferredAllocation, {label}, sizes 1..{n}: optimal in {optimal}/{cases} "
          f"({100 * optimal / cases:.0f} %), p50 {pct(samples, .5):.3f} ms, p99 {pct(samples, .99):.3f} ms")


def xid_latency(h: Harness, events: int) -> None:
    assert h.plugin.current is not None and h.plugin.current.source.simulation is not None
    library = h.plugin.current.source.simulation.library
    uuids = [d.ID for d in h.registration.devices]
    samples = []
    for n in range(events):
        gpu = n % len(uuids)
        t = time.perf_counter()
        library.inject_xid(gpu, 79)
        h.kubelet.wait(functools.partial(_health_is, h, uuids[gpu], "Unhealthy"))
        samples.append(time.perf_counter() - t)
        h.kubelet.wait(functools.partial(_health_is, h, uuids[gpu], "Healthy"), timeout=10)
    print(f"XID event -> ListAndWatch update: p50 {pct(samples, .5):.2f} ms, max {max(samples) * 1000:.2f} ms "
          f"over {events} events (target < 20 ms)")


def _health_is(h: Harness, device: str, health: str) -> bool:
    return h.kubelet.health("nvidia.com/gpu")[device] == health


def restart_time(h: Harness, restarts: int) -> None:
    samples = []
    for _ in range(restarts):
        t = time.monotonic()
        h.kubelet.restart()
        reg = h.kubelet.registered("nvidia.com/gpu", timeout=10)
        samples.append(reg.at - t)
    print(f"kubelet restart -> re-registered: median {statistics.median(samples) * 1000:.0f} ms, "
          f"max {max(samples) * 1000:.0f} ms over {restarts} restarts (target < 1 s)")


def plugin_rss(tmp: str) -> float:
    directory = os.path.join(tmp, "rss")
    os.makedirs(directory)
    kubelet = KubeletStandIn(directory)
    proc = subprocess.Popen([sys.executable, "-m", "plugin", "--simulate=dgx-a100",
                             f"--kubelet-socket={kubelet.socket}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        kubelet.registered("nvidia.com/gpu", timeout=30)
        time.sleep(1.0)
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    finally:
        proc.terminate()
        proc.wait()
        kubelet.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(tmp, "--simulate=dgx1v", "--health-recovery-period=10ms", "--health-probe-interval=10ms")
        try:
            latency(h, args.calls)
            preferred_quality(h, "8 GPUs (DGX-1V)", args.repeats)
            xid_latency(h, 50)
            restart_time(h, 10)
        finally:
            h.close()
        profile = os.path.join(tmp, "16.yaml")
        sixteen_gpu_profile(profile)
        h = Harness(os.path.join(tmp, "b"), f"--simulate={profile}")
        try:
            preferred_quality(h, "16 GPUs (random topology)", args.repeats)
        finally:
            h.close()
        print(f"plugin RSS (dgx-a100, registered, idle): {plugin_rss(tmp):.1f} MiB")


if __name__ == "__main__":
    main()
