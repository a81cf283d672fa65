"""The DRA driver as the chart's DRA mode deploys it (tests/e2e/dra.py) on a real kubelet (v1.36.2, containerd 1.7
with CDI), kube-scheduler and kube-controller-manager, with NVIDIA's DeviceClasses: the driver registers and
publishes its slices; pods with ResourceClaimTemplates (one GPU; two picked by productName; a MIG device) and an
unchanged pod asking `nvidia.com/gpu: 1` (a DeviceClass with extendedResourceName) run with exactly their devices'
nodes and NVIDIA_VISIBLE_DEVICES=void; a deleted pod's claim is unprepared; a killed and restarted driver, and a
restarted kubelet, lose nothing; a GPU with an XID is tainted NoSchedule and the scheduler leaves it to claims
that tolerate the taint."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.conftest import K8S, Cluster
from tests.e2e.dra import (
    CAPS_MAJOR,
    CONTROL,
    PLUGINS,
    REGISTRY,
    Driver,
    Workloads,
    checkpointed,
    claim_template,
    deployed_driver,
    nvidia_device_classes,
    published,
    slice_writes,
    slices,
    spec_files,
)
from tests.helpers import eventually

NS = "dra-e2e"  # the workloads
A100, H100 = "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"
# minors 0-2: A100, 3-4: H100, 5: an A100 split into MIG devices
PROFILE = {"name": "dra-e2e", "machine": "DGX", "driver_version": "550.54.15", "cuda_driver_version": 12040,
           "gpus": [{"model": "A100-SXM4-40GB", "count": 3}, {"model": "H100-80GB-HBM3", "count": 2},
                    {"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"]}]}
SHOW = ("for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c $n ] && stat -c 'node %n %t %T' $n; done; "
        "echo env NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; sleep 3600")


@pytest.fixture(scope="module")
def driver(cluster: Cluster) -> Iterator[Driver]:
    with nvidia_device_classes(cluster):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        with deployed_driver(cluster, PROFILE, "nvidia-dra", "dra") as d:
            yield d


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> Workloads:
    return Workloads(cluster, NS)


def pod(pods: Workloads, name: str, claim_template_name: str = "",
        limits: dict[str, str] | None = None) -> dict[str, Any]:
    return pods.pod(name, SHOW, claim_template_name, limits)


def shown(pods: Workloads, name: str) -> tuple[dict[str, tuple[int, int]], str]:
    """The pod's device nodes (name -> major, minor) and NVIDIA_VISIBLE_DEVICES, as its container saw them."""
    log = pods.log_when(name, "env NVIDIA_VISIBLE_DEVICES=")
    nodes = {os.path.basename(words[1]): (int(words[2], 16), int(words[3], 16))
             for words in (line.split() for line in log.splitlines() if line.startswith("node "))}
    visible = next(line.split("=", 1)[1] for line in log.splitlines() if line.startswith("env NVIDIA_VISIBLE"))
    return nodes, visible


def gpu_nodes(nodes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {n: number for n, number in nodes.items() if n not in CONTROL}


# -- scenarios ----------------------------------------------------------------------------------------------------
def test_the_driver_publishes_the_nodes_devices(cluster: Cluster, driver: Driver) -> None:
    devices = published(cluster)
    assert sorted(devices) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5-mig-1g5gb-19-2",
                               "gpu-5-mig-1g5gb-19-3", "gpu-5-mig-2g10gb-14-0", "gpu-5-mig-3g20gb-9-4"]
    assert devices["gpu-3"]["attributes"]["productName"] == {"string": H100}
    (pool_slice,) = [s for s in slices(cluster) if "devices" in s["spec"]]
    assert pool_slice["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert "registered with the kubelet" in driver.log()


def test_pods_get_exactly_their_devices(pods: Workloads, driver: Driver) -> None:
    """Two H100s by productName first (so no other claim takes one), then the others at once."""
    h100 = f"device.attributes['gpu.nvidia.com'].productName == '{H100}'"
    pods.create(claim_template("two-h100", "gpu.nvidia.com", 2, h100), pod(pods, "two-h100", "two-h100"))
    pods.running("two-h100")
    a100 = f"device.attributes['gpu.nvidia.com'].productName == '{A100}'"
    small = "device.attributes['gpu.nvidia.com'].profile == '1g.5gb'"
    pods.create(claim_template("one-gpu", "gpu.nvidia.com", 1, a100), pod(pods, "one-gpu", "one-gpu"),
                claim_template("one-mig", "mig.nvidia.com", 1, small), pod(pods, "one-mig", "one-mig"),
                pod(pods, "unchanged", limits={"nvidia.com/gpu": "1"}))
    pods.running("one-gpu", "one-mig", "unchanged")
    for name in ("two-h100", "one-gpu", "unchanged"):
        nodes, visible = shown(pods, name)
        minors = sorted(int(d.removeprefix("gpu-")) for d in pods.allocated(name))
        assert gpu_nodes(nodes) == {f"nvidia{m}": (195, m) for m in minors}, name
        assert {n: nodes[n] for n in CONTROL} == CONTROL and visible == "void", name
    assert sorted(pods.allocated("two-h100")) == ["gpu-3", "gpu-4"]
    (mig,) = pods.allocated("one-mig")
    assert mig in ("gpu-5-mig-1g5gb-19-2", "gpu-5-mig-1g5gb-19-3")
    nodes, visible = shown(pods, "one-mig")
    caps = {n: number for n, number in gpu_nodes(nodes).items() if n.startswith("nvidia-cap")}
    assert set(gpu_nodes(nodes)) - set(caps) == {"nvidia5"} and len(caps) == 2 and visible == "void"
    assert all(major == CAPS_MAJOR for major, _ in caps.values())
    hooks = (driver.work / "hooks.log").read_text().split("\n")
    assert {h.split()[0] for h in hooks if h} == {"create-symlinks", "enable-cuda-compat", "update-ldcache",
                                                  "disable-device-node-modification"}


def test_deleting_a_pod_unprepares_its_claim(pods: Workloads, driver: Driver) -> None:
    claim_uid = claim_uid_of(pods, "one-gpu")
    spec = f"k8s.gpu.nvidia.com-claim_{claim_uid}.json"
    assert spec in spec_files()
    pods.delete("one-gpu")
    eventually(lambda: spec not in spec_files() and claim_uid not in checkpointed(), timeout=60)


def test_a_killed_driver_restarts_without_losing_a_claim(pods: Workloads, driver: Driver) -> None:
    before = {name: claim_uid_of(pods, name) for name in ("two-h100", "one-mig", "unchanged")}
    writes = slice_writes()
    driver.stop(signal.SIGKILL)
    driver.start()
    eventually(driver.healthy, timeout=30)
    assert slice_writes() == 0 and writes > 0  # the slices were in place: nothing to write
    assert set(before.values()) <= set(checkpointed())
    assert all(pods.phase(name) == "Running" for name in before)
    # The restarted driver unprepares a claim the first one prepared.
    spec = f"k8s.gpu.nvidia.com-claim_{before['unchanged']}.json"
    pods.delete("unchanged")
    eventually(lambda: spec not in spec_files(), timeout=60)


def test_a_kubelet_restart_registers_and_publishes_again(cluster: Cluster, pods: Workloads, driver: Driver) -> None:
    generation = slices(cluster)[0]["spec"]["pool"]["generation"]
    registered = driver.log().count("registered with the kubelet")
    subprocess.run([str(K8S / "node"), "restart", str(cluster.dir)], check=True, capture_output=True)
    eventually(lambda: driver.log().count("registered with the kubelet") > registered, timeout=30)
    def republished() -> bool:  # the kubelet deleted them at its start
        found = slices(cluster)
        return len(found) == 2 and all(s["spec"]["pool"]["generation"] > generation for s in found)

    eventually(republished, timeout=30)
    assert len(published(cluster)) == 9
    assert all(pods.phase(name) == "Running" for name in ("two-h100", "one-mig"))


def test_a_gpu_with_an_xid_is_left_to_claims_that_tolerate_it(cluster: Cluster, pods: Workloads,
                                                               driver: Driver) -> None:
    with driver.events.open("a") as f:
        f.write("1 79\n")  # GPU 1 (gpu-1) falls off the bus
    eventually(lambda: bool(published(cluster)["gpu-1"].get("taints")), timeout=30)
    (taint,) = published(cluster)["gpu-1"]["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("gpu.nvidia.com/xid", "79", "NoSchedule")
    uuid = published(cluster)["gpu-1"]["attributes"]["uuid"]["string"]
    that_gpu = f"device.attributes['gpu.nvidia.com'].uuid == '{uuid}'"
    pods.create(claim_template("sick", "gpu.nvidia.com", 1, that_gpu), pod(pods, "sick", "sick"))
    eventually(lambda: pods.unschedulable("sick") is not None, timeout=30)
    assert "taints" in published(cluster)["gpu-1"]  # the scheduler judged it while the taint was there
    pods.create(claim_template("tolerant", "gpu.nvidia.com", 1, that_gpu, tolerate_xid=True),
                pod(pods, "tolerant", "tolerant"))
    pods.running("tolerant")
    assert pods.allocated("tolerant") == ["gpu-1"]
    # The GPU answers its probes again: after the recovery period the taint goes.
    eventually(lambda: "taints" not in published(cluster)["gpu-1"], timeout=30)


def claim_uid_of(pods: Workloads, pod_name: str) -> str:
    return str(pods.claim_of(pod_name)["metadata"]["uid"])


def test_every_claim_is_unprepared_and_a_stopped_driver_leaves_no_sockets(cluster: Cluster, driver: Driver) -> None:
    cluster.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
    eventually(lambda: not {f for f in spec_files() if f.startswith("k8s.gpu.nvidia.com-claim_")}
               and not checkpointed(), timeout=60)
    assert driver.stop() == 0
    assert not os.path.exists(f"{REGISTRY}/gpu.nvidia.com-reg.sock")
    assert not os.path.exists(f"{PLUGINS}/gpu.nvidia.com/dra.sock")
