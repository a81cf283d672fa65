"""The device plugin as the chart deploys it, registered with a real kubelet (v1.36.2, containerd):
the Node's allocatable, a GPU pod's environment, and a kubelet restart."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import pytest
from kubernetes import client

from gfd.discovery.simulated.profiles import load_profile
from plugin.api.podresources_pb2 import ListPodResourcesRequest
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub
from tests.e2e.conftest import K8S, NODE, Cluster, render
from tests.e2e.podrunner import PodRunner
from tests.helpers import eventually

NS = "nvidia-device-plugin"
DAEMONSET = "nvdp-nvidia-device-plugin"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"  # the kubelet's, bind-mounted by `node up`
SIMULATE = {"DP_SIMULATE": "dgx-a100"}  # the one addition to the rendered env: this machine has no GPU


def allocatable(cluster: Cluster) -> str | None:
    status = cluster.core.read_node(NODE).status
    return (status.allocatable or {}).get("nvidia.com/gpu") if status else None


@pytest.fixture(scope="module")
def plugin_pod(cluster: Cluster) -> Iterator[PodRunner]:
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    objects = render({}, NS)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    template = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == DAEMONSET)
    runner = PodRunner(cluster.core, template["spec"]["template"], f"{DAEMONSET}-e2e", NS, NODE, cluster.api_port,
                       cluster.ca_file, real_host_paths=(DEVICE_PLUGINS,), pod_node="pod-runner")
    runner.start("nvidia-device-plugin-ctr", SIMULATE)
    yield runner
    runner.stop()


def test_the_plugin_registers_and_the_node_shows_its_gpus(cluster: Cluster, plugin_pod: PodRunner) -> None:
    took = eventually(lambda: allocatable(cluster) == "8", timeout=30)
    print(f"allocatable nvidia.com/gpu=8 {took:.1f} s after the plugin started")
    status = cluster.core.read_node(NODE).status
    assert status is not None and (status.capacity or {})["nvidia.com/gpu"] == "8"


def test_a_gpu_pod_runs_with_the_devices_it_was_allocated(cluster: Cluster, plugin_pod: PodRunner) -> None:
    eventually(lambda: allocatable(cluster) == "8", timeout=30)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="gpu-pod", namespace="default"),
        spec=client.V1PodSpec(
            node_name=NODE, host_network=True, automount_service_account_token=False,
            termination_grace_period_seconds=0, restart_policy="Never",
            containers=[client.V1Container(
                name="cuda", image="docker.io/local/busybox:1", image_pull_policy="Never",
                command=["/bin/sh", "-c", "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; sleep 3600"],
                resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "2"}))]))
    cluster.core.create_namespaced_pod("default", pod)
    def phase() -> str:
        return str(getattr(cluster.core.read_namespaced_pod("gpu-pod", "default").status, "phase", ""))

    eventually(lambda: phase() == "Running", timeout=60)
    log = ""

    def logged() -> bool:
        nonlocal log
        log = cluster.core.read_namespaced_pod_log("gpu-pod", "default")
        return "NVIDIA_VISIBLE_DEVICES=" in log

    eventually(logged, timeout=30)
    devices = log.split("NVIDIA_VISIBLE_DEVICES=", 1)[1].split()[0].split(",")
    known = {g.uuid for g in load_profile("dgx-a100").gpus}
    assert len(devices) == 2 and set(devices) <= known, log
    # The kubelet's PodResources API reports the same assignment.
    with grpc.insecure_channel(f"unix://{cluster.node_env['POD_RESOURCES_SOCKET']}") as channel:
        listed = PodResourcesListerStub(channel).List(  # type: ignore[no-untyped-call]
            ListPodResourcesRequest(), timeout=10)
    pod_resources = next(p for p in listed.pod_resources if (p.namespace, p.name) == ("default", "gpu-pod"))
    assigned = {(d.resource_name, i) for c in pod_resources.containers for d in c.devices for i in d.device_ids}
    assert assigned == {("nvidia.com/gpu", uuid) for uuid in devices}
    cluster.core.delete_namespaced_pod("gpu-pod", "default", grace_period_seconds=0)


def test_a_kubelet_restart_brings_the_resources_back(cluster: Cluster, plugin_pod: PodRunner) -> None:
    eventually(lambda: allocatable(cluster) == "8", timeout=30)
    registrations = plugin_pod.log("nvidia-device-plugin-ctr").count("registered with the kubelet")
    subprocess.run([str(K8S / "node"), "restart", str(cluster.dir)], check=True, capture_output=True)
    eventually(lambda: plugin_pod.log("nvidia-device-plugin-ctr").count("registered with the kubelet")
               > registrations, timeout=30)
    eventually(lambda: allocatable(cluster) == "8", timeout=30)
    assert "Traceback" not in plugin_pod.log("nvidia-device-plugin-ctr")
