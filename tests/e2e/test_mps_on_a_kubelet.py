"""MPS as the chart deploys it on a real kubelet: the MPS control daemon's pod (its mount-shm and
config-manager init containers, then the daemon, with the stand-in `nvidia-cuda-mps-control` on PATH),
the plugin's pod waiting for it, and a pod that gets a replica and finds the daemon's pipe where the
runtime mounted it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.conftest import POD_RUNNER, ROOT, Cluster, render
from tests.e2e.podrunner import BIN, PodRunner
from tests.helpers import eventually

NS = "nvidia-mps"
RELEASE = "mps"
PLUGIN, DAEMON = "mps-nvidia-device-plugin", "mps-nvidia-device-plugin-mps-control-daemon"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
MPS_CONFIG = ("version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n")
# The additions to the rendered env: this machine has no GPU and no driver (the stand-in MPS control
# program is found on PATH, as the driver's is in a real container).
EXTRA = {"DP_SIMULATE": "dgx-a100", "PATH": f"{ROOT / 'tests' / 'mps'}:{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"}


def allocatable(cluster: Cluster) -> str | None:
    status = cluster.core.read_node("gpu-node-1").status
    return (status.allocatable or {}).get("nvidia.com/gpu") if status else None


@pytest.fixture(scope="module")
def mps_pods(cluster: Cluster) -> Iterator[tuple[PodRunner, PodRunner, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mps-", dir="/tmp"))  # mps.root on the host; short for unix sockets
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    objects = render({"config": {"map": {"mps": MPS_CONFIG}, "default": "mps"}, "mps": {"root": str(root)}},
                     NS, RELEASE)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    templates = {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] == "DaemonSet"}
    shared = (str(root), f"{root}/shm")
    daemon = PodRunner(cluster.core, templates[DAEMON], f"{DAEMON}-e2e", NS, "gpu-node-1", cluster.api_port,
                       cluster.ca_file, real_host_paths=shared, pod_node=POD_RUNNER)
    plugin = PodRunner(cluster.core, templates[PLUGIN], f"{PLUGIN}-e2e", NS, "gpu-node-1", cluster.api_port,
                       cluster.ca_file, real_host_paths=(DEVICE_PLUGINS, *shared), pod_node=POD_RUNNER)
    try:
        for runner, init in ((daemon, "mps-control-daemon-mounts"), (daemon, "mps-control-daemon-init"),
                             (plugin, "nvidia-device-plugin-init")):
            assert runner.run_to_completion(init, EXTRA) == 0, runner.log(init)
        plugin.start("nvidia-device-plugin-ctr", EXTRA)  # first: it must wait for the daemon
        yield daemon, plugin, root
    finally:
        plugin.stop()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_plugin_waits_for_the_daemon_then_the_node_shows_the_replicas(
        cluster: Cluster, mps_pods: tuple[PodRunner, PodRunner, Path]) -> None:
    daemon, plugin, root = mps_pods
    eventually(lambda: "Waiting for MPS daemon to be ready" in plugin.log("nvidia-device-plugin-ctr"), timeout=30)
    assert allocatable(cluster) != "32"
    daemon.start("mps-control-daemon-ctr", EXTRA)
    took = eventually(lambda: allocatable(cluster) == "32", timeout=60)  # 8 GPUs x 4 replicas
    print(f"allocatable nvidia.com/gpu=32 {took:.1f} s after the MPS daemon started")
    assert (root / ".ready").exists() and (root / "nvidia.com/gpu/.started").exists()


def test_a_pod_gets_a_replica_and_the_daemons_pipe(cluster: Cluster,
                                                   mps_pods: tuple[PodRunner, PodRunner, Path]) -> None:
    eventually(lambda: allocatable(cluster) == "32", timeout=60)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="mps-pod", namespace="default"),
        spec=client.V1PodSpec(
            node_name="gpu-node-1", host_network=True, automount_service_account_token=False,
            termination_grace_period_seconds=0, restart_policy="Never",
            containers=[client.V1Container(
                name="cuda", image="docker.io/local/busybox:1", image_pull_policy="Never",
                command=["/bin/sh", "-c", "echo PIPE=$CUDA_MPS_PIPE_DIRECTORY; ls -l $CUDA_MPS_PIPE_DIRECTORY/control;"
                         " sleep 3600"],
                resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}))]))
    cluster.core.create_namespaced_pod("default", pod)
    log = ""

    def logged() -> bool:
        nonlocal log
        log = cluster.core.read_namespaced_pod_log("mps-pod", "default")
        return "control" in log

    def phase() -> str:
        return str(getattr(cluster.core.read_namespaced_pod("mps-pod", "default").status, "phase", ""))

    try:
        eventually(lambda: phase() == "Running", timeout=60)
        eventually(logged, timeout=30)
        assert "PIPE=/mps/nvidia.com/gpu/pipe" in log
        # The socket the MPS control daemon created on the host, seen inside the pod where the runtime
        # bind-mounted the path the plugin's Allocate named.
        assert any(line.startswith("s") and line.endswith("/mps/nvidia.com/gpu/pipe/control")
                   for line in log.splitlines()), log
    finally:
        cluster.core.delete_namespaced_pod("mps-pod", "default", grace_period_seconds=0)
