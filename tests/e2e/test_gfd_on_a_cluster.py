"""GFD as the chart deploys it, on a real API server with the NFD master: labels reach the Node, the
chart's RBAC is enough (no 403), per-node config switching works through config-manager, and a
deleted NodeFeature comes back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.e2e.conftest import Cluster, render
from tests.e2e.podrunner import PodRunner
from tests.helpers import eventually

NS = "gpu-operator"
BIN = Path(sys.executable).parent
NODE = "gfd-node-1"  # a Node object without a kubelet: GFD's pod runs here as local processes
CONFIGS = {"default": "version: v1\n", "file": "version: v1\nflags:\n  useNodeFeatureAPI: false\n",
           "shared": "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n"
                     "      replicas: 4\n"}
DAEMONSET = "nvdp-nvidia-device-plugin-gpu-feature-discovery"
SIMULATE = {"GFD_SIMULATE": "dgx-a100"}  # the one addition to the rendered env: this machine has no GPU


@pytest.fixture(scope="module")
def gfd_pod(cluster: Cluster) -> Iterator[PodRunner]:
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    cluster.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
        name=NODE, labels={"kubernetes.io/hostname": NODE}, annotations={"e2e": "true"})))
    objects = render({"gfd": {"enabled": True}, "devicePlugin": {"enabled": False},
                      "config": {"map": CONFIGS, "default": "default"}}, NS)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    template = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == DAEMONSET)
    runner = PodRunner(cluster.core, template["spec"]["template"], f"{DAEMONSET}-e2e", NS, NODE,
                       cluster.api_port, cluster.ca_file)
    assert runner.run_to_completion("gpu-feature-discovery-init") == 0, runner.log("gpu-feature-discovery-init")
    runner.start("gpu-feature-discovery-ctr", SIMULATE)
    runner.start("gpu-feature-discovery-sidecar")
    yield runner
    runner.stop()


def node_labels(cluster: Cluster) -> dict[str, str]:
    metadata = cluster.core.read_node(NODE).metadata
    return dict((metadata.labels if metadata else None) or {})


def test_labels_reach_the_node_through_the_nfd_master(cluster: Cluster, gfd_pod: PodRunner) -> None:
    eventually(lambda: node_labels(cluster).get("nvidia.com/gpu.count") == "8", timeout=30)
    labels = node_labels(cluster)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    assert labels["nvidia.com/gpu.replicas"] == "1"
    feature = cast(dict[str, Any], client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        "nfd.k8s-sigs.io", "v1alpha1", NS, "nodefeatures", f"nvidia-features-for-{NODE}"))
    assert feature["metadata"]["labels"] == {"nfd.node.kubernetes.io/node-name": NODE}
    # Owner references: the Pod object the runner created (it has no DaemonSet owner, so none are set).
    assert "ownerReferences" not in feature["metadata"]


def test_the_node_label_switches_the_config(cluster: Cluster, gfd_pod: PodRunner) -> None:
    eventually(lambda: node_labels(cluster).get("nvidia.com/gpu.count") == "8", timeout=30)
    cluster.core.patch_node(NODE, {"metadata": {"labels": {"nvidia.com/device-plugin.config": "shared"}}})
    eventually(lambda: node_labels(cluster).get("nvidia.com/gpu.replicas") == "4", timeout=30)
    assert node_labels(cluster)["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-SHARED"
    assert "Sent signal" in gfd_pod.log("gpu-feature-discovery-sidecar")
    cluster.core.patch_node(NODE, {"metadata": {"labels": {"nvidia.com/device-plugin.config": "default"}}})
    eventually(lambda: node_labels(cluster).get("nvidia.com/gpu.replicas") == "1", timeout=30)


def test_file_mode_writes_the_feature_file_into_the_charts_host_path(cluster: Cluster, gfd_pod: PodRunner) -> None:
    """The chart's other output: features.d on the hostPath the pod mounts (an NFD worker, which this test
    cluster does not run, turns it into labels). Selected per node through a config, as an operator would."""
    feature_file = Path(gfd_pod.volumes["output-dir"]) / "gfd"
    cluster.core.patch_node(NODE, {"metadata": {"labels": {"nvidia.com/device-plugin.config": "file"}}})
    eventually(feature_file.exists, timeout=30)
    labels = dict(line.split("=", 1) for line in feature_file.read_text().splitlines())
    assert labels["nvidia.com/gpu.count"] == "8" and labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    reloads = gfd_pod.log("gpu-feature-discovery-ctr").count("config reloaded")
    cluster.core.patch_node(NODE, {"metadata": {"labels": {"nvidia.com/device-plugin.config": "default"}}})
    eventually(lambda: gfd_pod.log("gpu-feature-discovery-ctr").count("config reloaded") > reloads, timeout=30)


def test_a_deleted_node_feature_comes_back_within_seconds(cluster: Cluster, gfd_pod: PodRunner) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    name = f"nvidia-features-for-{NODE}"

    def exists() -> bool:
        try:
            custom.get_namespaced_custom_object("nfd.k8s-sigs.io", "v1alpha1", NS, "nodefeatures", name)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    eventually(exists, timeout=30)
    time.sleep(1)  # the watch is open
    custom.delete_namespaced_custom_object("nfd.k8s-sigs.io", "v1alpha1", NS, "nodefeatures", name)
    took = eventually(exists, timeout=10)
    print(f"NodeFeature recreated after {took:.2f} s")
    assert took < 3.0


def test_doctor_reads_the_real_api(cluster: Cluster, gfd_pod: PodRunner) -> None:
    """doctor's API checks against the real API server: NFD's CRD, this node's labels, a RuntimeClass."""
    eventually(lambda: "nvidia.com/gpu.count" in node_labels(cluster), timeout=30)

    def api_verdicts() -> dict[str, str]:
        proc = subprocess.run([str(BIN / "gpu-feature-discovery"), "doctor", "--output=json", "--simulate=dgx-a100",
                               f"--kubeconfig={cluster.kubeconfig}", f"--node-name={NODE}", "--runtime-class=nvidia"],
                              capture_output=True, text=True, timeout=60, check=False)
        checks = {c["id"]: c["verdict"] for c in json.loads(proc.stdout)["checks"]}
        return {k: checks[k] for k in ("nfd.features", "k8s.node-labels", "k8s.runtimeclass")}

    assert api_verdicts() == {"nfd.features": "ok", "k8s.node-labels": "ok", "k8s.runtimeclass": "failed"}
    node = client.NodeV1Api(cluster.api)
    node.create_runtime_class(client.V1RuntimeClass(metadata=client.V1ObjectMeta(name="nvidia"), handler="nvidia"))
    try:
        assert api_verdicts()["k8s.runtimeclass"] == "ok"
    finally:
        node.delete_runtime_class("nvidia")


def test_the_charts_rbac_is_enough_no_403(gfd_pod: PodRunner) -> None:
    for container in ("gpu-feature-discovery-init", "gpu-feature-discovery-ctr", "gpu-feature-discovery-sidecar"):
        text = gfd_pod.log(container)
        # An API refusal as our programs log it (timestamps may contain the digits 403 too).
        assert not re.search(r'HTTP 403|: 403 |"code": "403"|Forbidden', text), text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    assert '"event": "labels published"' in gfd_pod.log("gpu-feature-discovery-ctr")


def test_least_privilege_the_token_cannot_do_more(cluster: Cluster, gfd_pod: PodRunner) -> None:
    token = (gfd_pod.root / "serviceaccount" / "token").read_text()
    configuration = client.Configuration()
    configuration.host = cluster.env["API_URL"]
    configuration.ssl_ca_cert = cluster.ca_file
    configuration.api_key = {"authorization": f"Bearer {token}"}
    core = client.CoreV1Api(client.ApiClient(configuration))
    core.read_node(NODE)  # config-manager's ClusterRole
    for forbidden in (lambda: core.list_namespaced_secret(NS), lambda: core.patch_node(NODE, {"metadata": {
            "labels": {"x": "y"}}}), lambda: core.list_namespaced_pod("default")):
        with pytest.raises(client.ApiException) as e:
            forbidden()
        assert e.value.status == 403
