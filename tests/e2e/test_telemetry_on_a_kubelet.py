"""Share telemetry's process attribution on real parts: a container that the real kubelet started with containerd
(cgroupfs driver, this machine's cgroup hierarchies) is named by its process's /proc/<pid>/cgroup as the pod the API
server knows (metadata.uid) and the container the kubelet reports (status.containerStatuses[].containerID); the
collector, on a simulated GPU whose NVML lists that PID, puts the process's memory on the share of a checkpointed
claim reserved for that pod, with the pod the real kubelet's PodResources answer lists."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.profiles import SimProcess
from plugin.dra.checkpoint import PREPARE_COMPLETED, Checkpoint, PreparedClaim, PreparedDevice
from plugin.dra.claims import PodRef
from plugin.dra.shares import ShareLimits
from plugin.telemetry.cgroups import CgroupOwner, read_owner
from plugin.telemetry.collector import TelemetryCollector
from tests.e2e.conftest import NODE, Cluster
from tests.helpers import eventually
from tests.scrape import Scrape

NS = "default"


def pid_with(marker: str) -> int | None:
    """The PID of the process whose command line carries `marker` (the container's shell, as the host sees it)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue  # ended meanwhile
    return None


@pytest.fixture(scope="module")
def container(cluster: Cluster) -> Iterator[tuple[str, str, int]]:
    """A busybox pod whose shell's command line carries a marker: (its UID and container ID as the API server has
    them, its shell's PID)."""
    marker = f"share-telemetry-{uuid.uuid4().hex[:12]}"
    cluster.core.create_namespaced_pod(NS, client.V1Pod(
        metadata=client.V1ObjectMeta(name="trainer-0", namespace=NS),
        spec=client.V1PodSpec(
            node_name=NODE, host_network=True, automount_service_account_token=False,
            termination_grace_period_seconds=0, restart_policy="Never",
            containers=[client.V1Container(name="main", image="docker.io/local/busybox:1", image_pull_policy="Never",
                                           command=["/bin/sh", "-c", "while :; do sleep 1; done", marker])])))
    found: dict[str, Any] = {}

    def started() -> bool:
        pod = cluster.api.sanitize_for_serialization(  # type: ignore[no-untyped-call]
            cluster.core.read_namespaced_pod("trainer-0", NS))
        statuses = pod["status"].get("containerStatuses") or [{}]
        found.update(uid=pod["metadata"]["uid"], container=statuses[0].get("containerID"), pid=pid_with(marker))
        return bool(pod["status"].get("phase") == "Running" and found["container"] and found["pid"])

    eventually(started, timeout=60)
    yield found["uid"], found["container"], found["pid"]
    cluster.core.delete_namespaced_pod("trainer-0", NS, grace_period_seconds=0)


def test_a_containerd_containers_process_names_its_pod_and_container(container: tuple[str, str, int]) -> None:
    pod_uid, container_id, pid = container
    runtime, _, bare_id = container_id.partition("://")
    assert runtime == "containerd"
    assert read_owner("/proc", pid) == CgroupOwner(pod_uid, bare_id)


def test_its_gpu_memory_goes_to_the_share_of_its_pod(cluster: Cluster, container: tuple[str, str, int],
                                                       simulate: Any, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    pod_uid, _container_id, pid = container
    sim = simulate({"gpus": [{"model": "A100-SXM4-80GB", "count": 1}]})
    source = NodeSource("auto")
    source.host_root = sim.host_root
    source.open()
    request.addfinalizer(source.close)
    model = source.read()
    sim.node.gpus[0].processes[:] = [SimProcess(pid, 2048, "M+C")]
    Checkpoint(str(tmp_path), "boot").put(PreparedClaim("uid-train", NS, "train", PREPARE_COMPLETED, (PreparedDevice(
        ("gpu",), NODE, "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-train-gpu-0",), "share-t",
        share=ShareLimits(model.gpus[0].uuid, 20 * 1024, 0, True)),), (PodRef("trainer-0", pod_uid),)))
    collector = TelemetryCollector(lambda: model, 10, cluster.node_env["POD_RESOURCES_SOCKET"], NODE, xids=True,
                                   checkpoint_dir=str(tmp_path))
    collector.collect_once()
    s = Scrape(collector.exposition.decode())
    assert s.value("gpu_metrics_share_memory_used_mib", namespace=NS, pod="trainer-0", dra_share_id="share-t") == 2048
    assert s.value("gpu_metrics_share_processes", pod="", dra_share_id="") == 0
