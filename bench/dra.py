"""DRA driver figures: nvidia-dra-plugin as a process on a simulated node (dgx-a100) and the real API server
(../shared/k8s/cluster), the kubelet's calls made as the kubelet makes them (tests/dra.py).

Prints: start -> registration answered (GetInfo and NotifyRegistrationStatus, dialled as the kubelet's plugin
watcher dials a new socket) and start -> the node's ResourceSlices in the API server, over several starts (each
after the node's slices were deleted, as a kubelet start deletes them); NodePrepareResources /
NodeUnprepareResources p50/p99 for claims of 1 and 8 devices under back-to-back calls, beside the floor (an
empty NodeUnprepareResources); the driver's RSS, idle and at its peak.
Run: python -m bench.dra [--calls 300] [--starts 5] [--bin DIR]
(--bin: the bin directory of another install, e.g. a fresh `pip install .` of another commit, to compare)
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
from typing import Any

import grpc
from kubernetes import client, config

from bench.common import machine
from tests.dra import KubeletCalls, allocated_claim

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = Path(os.environ.get("GFD_SHARED_DIR") or ROOT.parent / "shared") / "k8s" / "cluster"
NODE, NS = "bench-node", "bench"
BIN = Path(sys.executable).parent


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Driver:
    def __init__(self, work: Path, kubeconfig: str, bin_dir: Path) -> None:
        self.work = work
        self.registration = work / "registry" / "gpu.nvidia.com-reg.sock"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(bin_dir / "nvidia-dra-plugin"), f"--node-name={NODE}", f"--kubeconfig={kubeconfig}",
             "--simulate=dgx-a100",
             f"--kubelet-registrar-directory-path={work / 'registry'}",
             f"--kubelet-plugins-directory-path={work / 'plugins'}", f"--cdi-root={work / 'cdi'}",
             "--nvidia-cdi-hook-path=/usr/bin/nvidia-cdi-hook", "--log-format=json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rss(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def until(predicate: Callable[[], bool], timeout: float = 30, poll: float = 0.002) -> float:
    """Monotonic time at which `predicate` first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(poll)
    return time.monotonic()


def registered(driver: Driver, kubelet: KubeletCalls) -> bool:
    if not driver.registration.exists():
        return False
    try:
        kubelet.register(timeout=1)
        return True
    except grpc.RpcError:
        return False


def published(resources: Any) -> bool:
    answer = resources.list_cluster_custom_object("resource.k8s.io", "v1", "resourceslices",
                                                  field_selector=f"spec.nodeName={NODE}")
    return any(len(s["spec"].get("devices", ())) == 8 for s in answer["items"])


def starts(work: Path, kubeconfig: str, api: client.ApiClient, count: int, bin_dir: Path) -> None:
    resources = client.CustomObjectsApi(api)
    to_registered, to_published = [], []
    for n in range(count):
        resources.delete_collection_cluster_custom_object("resource.k8s.io", "v1", "resourceslices")
        driver = Driver(work / f"start-{n}", kubeconfig, bin_dir)
        kubelet = KubeletCalls(str(driver.registration))
        try:
            to_registered.append(until(functools.partial(registered, driver, kubelet)) - driver.started)
            to_published.append(until(lambda: published(resources), poll=0.005) - driver.started)
        finally:
            kubelet.close()
            driver.stop()
    print(f"start -> registration answered: median {statistics.median(to_registered):.2f} s, "
          f"max {max(to_registered):.2f} s over {count} starts")
    print(f"start -> ResourceSlices published: median {statistics.median(to_published):.2f} s, "
          f"max {max(to_published):.2f} s over {count} starts (target <= 1 s; NVIDIA: 1.05 s)")


def latencies(work: Path, kubeconfig: str, api: client.ApiClient, calls: int, bin_dir: Path) -> None:
    driver = Driver(work / "latency", kubeconfig, bin_dir)
    kubelet = KubeletCalls(str(driver.registration))
    try:
        until(lambda: registered(driver, kubelet))
        until(lambda: published(client.CustomObjectsApi(api)))
        claims = {1: allocated_claim(api, NS, "one", NODE, "gpu-0"),
                  8: allocated_claim(api, NS, "eight", NODE, *(f"gpu-{i}" for i in range(8)))}
        time.sleep(1)  # the claims reach the driver's watch
        floor = []
        for _ in range(calls):
            t = time.perf_counter()
            kubelet.unprepare()
            floor.append(time.perf_counter() - t)
        print(f"floor, empty NodeUnprepareResources: p50 {pct(floor, .5):.2f} ms, p99 {pct(floor, .99):.2f} ms")
        for size, claim in claims.items():
            prepare, unprepare = [], []
            for _ in range(calls):
                t = time.perf_counter()
                answer = kubelet.prepare(claim).claims[claim.uid]
                prepare.append(time.perf_counter() - t)
                assert not answer.error and len(answer.devices) == size, answer
                t = time.perf_counter()
                assert not kubelet.unprepare(claim).claims[claim.uid].error
                unprepare.append(time.perf_counter() - t)
            slow = sum(1 for d in prepare if d > 0.010)
            print(f"{size} device(s), {calls} back-to-back pairs: NodePrepareResources p50 {pct(prepare, .5):.2f} ms, "
                  f"p99 {pct(prepare, .99):.2f} ms ({slow} over 10 ms); NodeUnprepareResources p50 "
                  f"{pct(unprepare, .5):.2f} ms, p99 {pct(unprepare, .99):.2f} ms (target: prepare p99 <= 10 ms; "
                  "NVIDIA p50 197 ms)")
        rss, peak = driver.rss()
        print(f"driver RSS (dgx-a100, registered, published, after the calls): {rss:.1f} MiB, peak {peak:.1f} MiB "
              "(target <= 62 MiB, NVIDIA's)")
    finally:
        kubelet.close()
        driver.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--bin", type=Path, default=BIN, help="where nvidia-dra-plugin is installed")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-dra-") as tmp:
        work = Path(tmp)
        kubeconfig = subprocess.run([str(CLUSTER), "up", str(work / "k8s")], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1]
        try:
            configuration = client.Configuration()
            config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                    client_configuration=configuration)
            with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE, labels={}, annotations={})))
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
                starts(work, kubeconfig, api, args.starts, args.bin)
                latencies(work, kubeconfig, api, args.calls, args.bin)
        finally:
            subprocess.run([str(CLUSTER), "down", str(work / "k8s")], check=False, capture_output=True)


if __name__ == "__main__":
    main()
