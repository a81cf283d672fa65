"""The device plugin as the chart deploys it, registered with a real kubelet (v1.36.2, containerd):
the Node's allocatable, a GPU pod's environment, and a kubelet restart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from gfd.discovery.simulated.profiles import load_profile
from plugin.api.podresources_pb2 import ListPodResourcesRequest
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub
from tests.e2e.conftest import K8S, NODE, POD_RUNNER, Cluster, render
from tests.e2e.podrunner import PodRunner
from tests.helpers import eventually, http_get

NS = "nvidia-device-plugin"
DAEMONSET = "nvdp-nvidia-device-plugin"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"  # the kubelet's, bind-mounted by `node up`
# The additions to the rendered env: this machine has no GPU; telemetry sampled every second, not 10.
SIMULATE = {"DP_SIMULATE": "dgx-a100", "COLLECT_INTERVAL": "1s"}
POD_RESOURCES = "/var/lib/kubelet/pod-resources"  # the chart's hostPath; this kubelet's is under its root


def allocatable(cluster: Cluster) -> str | None:
    status = cluster.core.read_node(NODE).status
    return (status.allocatable or {}).get("nvidia.com/gpu") if status else None


@pytest.fixture(scope="module")
def plugin_pod(cluster: Cluster) -> Iterator[PodRunner]:
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    objects = render({"devicePlugin": {"gpuMetrics": {"enabled": True}}}, NS)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    template = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == DAEMONSET)
    # The kubelet's pod-resources directory where the chart expects it, as `node up` does for device-plugins
    # (this tier runs in a mount namespace of its own, so the bind is private to it).
    created = not os.path.isdir(POD_RESOURCES)
    os.makedirs(POD_RESOURCES, exist_ok=True)
    kubelet_dir = os.path.dirname(cluster.node_env["POD_RESOURCES_SOCKET"])
    subprocess.run(["mount", "--bind", kubelet_dir, POD_RESOURCES], check=True)
    runner = PodRunner(cluster.core, template["spec"]["template"], f"{DAEMONSET}-e2e", NS, NODE, cluster.api_port,
                       cluster.ca_file, real_host_paths=(DEVICE_PLUGINS, POD_RESOURCES), pod_node=POD_RUNNER)
    runner.start("nvidia-device-plugin-ctr", SIMULATE)
    yield runner
    runner.stop()
    subprocess.run(["umount", POD_RESOURCES], check=False)
    if created:
        os.rmdir(POD_RESOURCES)


def gpu_holders(uuid: str) -> set[tuple[str, str, str]]:
    """Who the plugin's GPU telemetry says holds a GPU, read with Prometheus' parser."""
    answer = http_get("http://127.0.0.1:9101/metrics")
    assert answer is not None and answer[0] == 200
    return {(x.labels["namespace"], x.labels["pod"], x.labels["container"])
            for family in text_string_to_metric_families(answer[1]) for x in family.samples
            if x.name == "DCGM_FI_DEV_GPU_UTIL" and x.labels["UUID"] == uuid}


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
    # The plugin's GPU telemetry, through the same kubelet API, names the pod on exactly those GPUs.
    eventually(lambda: all(gpu_holders(u) == {("default", "gpu-pod", "cuda")} for u in devices), timeout=15)
    assert all(gpu_holders(u) == {("", "", "")} for u in known - set(devices))
    cluster.core.delete_namespaced_pod("gpu-pod", "default", grace_period_seconds=0)
    eventually(lambda: gpu_holders(devices[0]) == {("", "", "")}, timeout=60)


def test_a_kubelet_restart_brings_the_resources_back(cluster: Cluster, plugin_pod: PodRunner) -> None:
    eventually(lambda: allocatable(cluster) == "8", timeout=30)
    registrations = plugin_pod.log("nvidia-device-plugin-ctr").count("registered with the kubelet")
    subprocess.run([str(K8S / "node"), "restart", str(cluster.dir)], check=True, capture_output=True)
    eventually(lambda: plugin_pod.log("nvidia-device-plugin-ctr").count("registered with the kubelet")
               > registrations, timeout=30)
    eventually(lambda: allocatable(cluster) == "8", timeout=30)
    assert "Traceback" not in plugin_pod.log("nvidia-device-plugin-ctr")
