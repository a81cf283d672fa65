"""Memory-sized GPU shares (issue 24) on the real kubelet, kube-scheduler and containerd with CDI: the chart's DRA
driver with `--consumable-shares=memory` and `--share-enforcement=mps` on a node of two 80 GB GPUs, the MPS stand-in
(tests/mps/) as the driver's nvidia-cuda-mps-control.

Placement is the scheduler's alone: three pods claiming 30Gi each cannot fit on one GPU (79.6 GiB) and there are
two GPUs, so two land on one and the third on the other. Each container gets its GPU's MPS pipe directory, its
limit and thread percentage, and the MPS shared memory; one MPS daemon runs per shared GPU, taken over by a
restarted driver, started again when it dies, stopped with the GPU's last share (the GPU back in DEFAULT). A claim
larger than any GPU stays pending with the scheduler's reason. Claims written for NVIDIA's consumable shares
(`capacity.requests.memory: 4Gi` against `gpu.nvidia.com`) are placed and prepared the same way; a claim that
names no amount gets a whole GPU, without MPS."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from plugin.dra.checkpoint import read_prepared
from plugin.dra.shares import node_shares
from tests.e2e.conftest import ROOT, Cluster
from tests.e2e.dra import (
    PLUGINS,
    Driver,
    Workloads,
    claim_template,
    deployed_driver,
    nvidia_device_classes,
    published,
)
from tests.e2e.podrunner import BIN
from tests.helpers import eventually
from tests.mps import standin

NS = "shares-e2e"  # the workloads
PROFILE = {"name": "shares-e2e", "machine": "DGX", "driver_version": "550.54.15", "cuda_driver_version": 12040,
           "gpus": [{"model": "H100-80GB-HBM3", "count": 2}]}  # 81559 MiB each (the simulated model's NVML figure)
VALUES = {"dra": {"enabled": True, "deviceClasses": False, "consumableShares": "memory", "shareEnforcement": "mps",
                  "featureGates": {"ConsumableShares": True}}}
# The additions to the rendered env: the MPS stand-in is found on PATH as the driver's program would be.
EXTRA = {"PATH": f"{ROOT / 'tests' / 'mps'}:{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"}


def script(name: str) -> str:
    """What the container saw: its MPS environment, the daemon's socket in its pipe directory, and a file it
    writes into its /dev/shm (found on the host's MPS shared memory when that is what is mounted there)."""
    return ("echo PIPE=$CUDA_MPS_PIPE_DIRECTORY; echo LIMIT=$CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; "
            "echo THREADS=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; ls $CUDA_MPS_PIPE_DIRECTORY 2>/dev/null | "
            f"sed 's/^/PIPE-HAS=/'; touch /dev/shm/{name}; echo done; sleep 3600")


@pytest.fixture(scope="module")
def mps_root() -> Iterator[Path]:
    with standin.daemons_root() as root:  # the host's mps.root
        (root / "shm").mkdir()
        yield root


@pytest.fixture(scope="module")
def driver(cluster: Cluster, mps_root: Path) -> Iterator[Driver]:
    with nvidia_device_classes(cluster):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        values = {**VALUES, "mps": {"root": str(mps_root)}}
        with deployed_driver(cluster, PROFILE, "nvidia-dra-shares", "shares", values, EXTRA,
                             host_paths=(str(mps_root), f"{mps_root}/shm"), before=("mps-mounts",)) as d:
            yield d


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> Workloads:
    return Workloads(cluster, NS)


def seen(pods: Workloads, name: str) -> dict[str, list[str]]:
    """What the pod's container printed, by key."""
    found: dict[str, list[str]] = {}
    for line in pods.log_when(name, "done").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, []).append(value)
    return found


def events(driver: Driver, name: str) -> list[dict[str, str]]:
    """The driver's log events named `name`, in order (its log is JSON lines)."""
    found = [json.loads(line) for line in driver.log().splitlines() if line.startswith("{") and f'"{name}"' in line]
    return [e for e in found if e["event"] == name]


def compute_modes(driver: Driver) -> dict[str, str]:
    """The compute mode the driver last set on each GPU, through the simulated NVML."""
    return {e["gpu"]: e["mode"] for e in events(driver, "compute mode set")}


def uuids(cluster: Cluster) -> dict[str, str]:
    return {name: d["attributes"]["uuid"]["string"] for name, d in published(cluster).items()}


def mount_type(path: Path) -> str | None:
    """The file system type mounted at `path` in this mount namespace, the topmost (None: not a mount point)."""
    types = [fields[fields.index("-") + 1] for fields in map(str.split, Path("/proc/self/mountinfo").read_text()
                                                            .splitlines()) if fields[4] == str(path)]
    return types[-1] if types else None


def daemon(mps_root: Path, uuid: str) -> int | None:
    pid = standin.daemon_pid(mps_root / uuid / "pipe")
    return None if pid is None or standin.gone(pid) else pid


def test_the_driver_publishes_shareable_gpus_with_memory_and_compute(cluster: Cluster, driver: Driver) -> None:
    devices = published(cluster)
    assert sorted(devices) == ["gpu-0", "gpu-1"]
    for device in devices.values():
        assert device["allowMultipleAllocations"] is True
        assert device["capacity"]["memory"]["requestPolicy"]["default"] == device["capacity"]["memory"]["value"]
        assert device["capacity"]["compute"] == {"value": "100", "requestPolicy": {
            "default": "0", "validRange": {"min": "0", "max": "100", "step": "1"}}}


def test_three_30gi_claims_land_two_on_one_gpu_and_one_on_the_other(
        cluster: Cluster, pods: Workloads, driver: Driver, mps_root: Path) -> None:
    pods.create(claim_template("share-30gi", "gpu.nvidia.com", capacity={"memory": "30Gi", "compute": "30"}),
                *(pods.pod(name, script(name), "share-30gi") for name in ("a", "b", "c")))
    pods.running("a", "b", "c")
    placed = {name: pods.allocated(name) for name in ("a", "b", "c")}
    by_gpu = [sum(devices == [gpu] for devices in placed.values()) for gpu in ("gpu-0", "gpu-1")]
    assert sorted(by_gpu) == [1, 2], placed  # decided by the scheduler: 3 x 30Gi do not fit one 79.6 GiB GPU
    by_name = uuids(cluster)
    for name, (device,) in placed.items():
        claim = pods.claim_of(name)
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert result["shareID"] and result["consumedCapacity"] == {"memory": "30Gi", "compute": "30"}
        env = seen(pods, name)
        uuid = by_name[device]
        assert env["PIPE"] == [f"/mps/{uuid}/pipe"] and "control" in env["PIPE-HAS"], env
        assert env["LIMIT"] == ["0=30720M"] and env["THREADS"] == ["30"], env
        assert (mps_root / "shm" / name).exists()  # its /dev/shm is the MPS shared memory
    assert mount_type(mps_root / "shm") == "tmpfs"  # the init container's, mounted through Bidirectional propagation
    # One MPS daemon per shared GPU (nothing else under the MPS root), serving that GPU alone, its GPU exclusive.
    assert sorted(p.name for p in mps_root.iterdir()) == sorted([*by_name.values(), "shm"])
    for uuid in by_name.values():
        assert daemon(mps_root, uuid) is not None
        assert f"CUDA_VISIBLE_DEVICES={uuid}\n" in standin.control_log(mps_root / uuid / "log")
    assert compute_modes(driver) == {uuid: "EXCLUSIVE_PROCESS" for uuid in by_name.values()}
    # The share records (what per-share telemetry reads): each share's GPU, limits, claim and pod.
    shares = node_shares(read_prepared(f"{PLUGINS}/gpu.nvidia.com").values())
    assert sorted((s.pods[0].name, s.limits.memory_mib, s.limits.compute_percent, s.limits.enforced)
                  for s in shares) == [(n, 30720, 30, True) for n in ("a", "b", "c")]


def test_a_claim_larger_than_any_gpu_stays_pending_with_the_schedulers_reason(pods: Workloads,
                                                                              driver: Driver) -> None:
    pods.create(claim_template("share-100gi", "gpu.nvidia.com", capacity={"memory": "100Gi"}),
                pods.pod("too-big", script("too-big"), "share-100gi"))
    eventually(lambda: pods.unschedulable("too-big") is not None, timeout=30)
    # The scheduler's words, e.g. "0/3 nodes are available: 1 cannot allocate all claims, 2 Too many pods.
    # still not schedulable, preemption: ...": no node fits, and the one GPU node is turned down for the claim (the
    # other nodes, without a kubelet, for reasons of their own).
    message = str(pods.unschedulable("too-big"))
    verdict = re.match(r"0/\d+ nodes are available: ([^.]*)\.", message)
    assert verdict is not None and "1 cannot allocate all claims" in verdict.group(1).split(", "), message
    assert "allocation" not in pods.claim_of("too-big").get("status", {})
    pods.delete("too-big")


def test_a_restarted_driver_adopts_the_daemons_and_a_dead_one_is_started_again(
        cluster: Cluster, pods: Workloads, driver: Driver, mps_root: Path) -> None:
    by_name = uuids(cluster)
    before = {uuid: daemon(mps_root, uuid) for uuid in by_name.values()}
    driver.stop(signal.SIGKILL)
    driver.start()
    eventually(driver.healthy, timeout=30)
    assert {uuid: daemon(mps_root, uuid) for uuid in by_name.values()} == before  # the same daemons serve on
    assert driver.log().count("Adopted the running MPS daemon") == 2
    assert all(pods.phase(name) == "Running" for name in ("a", "b", "c"))
    uuid = by_name["gpu-0"]
    dead = before[uuid]
    assert dead is not None
    os.killpg(dead, signal.SIGKILL)
    eventually(lambda: daemon(mps_root, uuid) not in (None, dead), timeout=30)
    assert "MPS daemon not serving; starting it again" in driver.log()  # after THRESHOLD failed probes


def test_deleting_the_pods_stops_each_daemon_with_its_gpus_last_share_and_gives_the_gpu_back(
        cluster: Cluster, pods: Workloads, driver: Driver, mps_root: Path) -> None:
    by_name = uuids(cluster)
    placed = {name: pods.allocated(name)[0] for name in ("a", "b", "c")}
    first, second = (name for name, device in placed.items() if list(placed.values()).count(device) == 2)
    (alone,) = set(placed) - {first, second}
    shared = by_name[placed[first]]
    serving = daemon(mps_root, shared)
    gone = pods.claim_of(first)["metadata"]["uid"]
    pods.delete(first)
    # Logged once the unprepare is done, MPS daemons included.
    eventually(lambda: any(e["claim"].endswith(f":{gone}") for e in events(driver, "claim unprepared")), timeout=60)
    # Its GPU still holds the other pod's share: the same daemon serves on, the GPU still exclusive.
    assert serving is not None and daemon(mps_root, shared) == serving
    assert compute_modes(driver)[shared] == "EXCLUSIVE_PROCESS"
    pods.delete(second, alone)
    eventually(lambda: not any((mps_root / uuid).exists() for uuid in by_name.values()), timeout=60)
    assert all(daemon(mps_root, uuid) is None for uuid in by_name.values())
    assert compute_modes(driver) == {uuid: "DEFAULT" for uuid in by_name.values()}


def test_claims_written_for_nvidias_consumable_shares_are_placed_and_prepared_the_same_way(
        cluster: Cluster, pods: Workloads, driver: Driver, mps_root: Path) -> None:
    """NVIDIA's demo claim (`exactly.capacity.requests.memory: 4Gi`, class gpu.nvidia.com) shares a GPU, limited
    to 4 GiB and no thread limit (it names no compute); a claim that names no amount takes a whole GPU, no MPS."""
    pods.create(claim_template("whole", "gpu.nvidia.com"), pods.pod("whole", script("whole"), "whole"))
    pods.running("whole")
    (whole,) = pods.allocated("whole")
    pods.create(claim_template("nvidia-4gi", "gpu.nvidia.com", capacity={"memory": "4Gi"}),
                *(pods.pod(name, script(name), "nvidia-4gi") for name in ("small-1", "small-2")))
    pods.running("small-1", "small-2")
    (other,) = {"gpu-0", "gpu-1"} - {whole}
    assert pods.allocated("small-1") == pods.allocated("small-2") == [other]
    uuid = uuids(cluster)[other]
    for name in ("small-1", "small-2"):
        env = seen(pods, name)
        assert (env["PIPE"], env["LIMIT"], env["THREADS"]) == ([f"/mps/{uuid}/pipe"], ["0=4096M"], [""]), env
    env = seen(pods, "whole")
    assert (env["PIPE"], env["LIMIT"], env["THREADS"]) == ([""], [""], [""]), env  # the GPU is the claim's alone
    assert daemon(mps_root, uuids(cluster)[whole]) is None and daemon(mps_root, uuid) is not None
    pods.delete("whole", "small-1", "small-2")
    eventually(lambda: not (mps_root / uuid).exists(), timeout=60)


def test_the_driver_stops_cleanly(driver: Driver) -> None:
    assert driver.stop() == 0
