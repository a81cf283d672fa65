"""The NodeFeature output through the official kubernetes client against the loopback API server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.config import load_config, parse_command_line
from gfd.metrics import Metrics
from gfd.outputs import OutputError
from gfd.outputs.nodefeature import NodeFeatureOutput
from tests.apiserver import FakeApiServer

NS = "gpu-ops"
COLLECTION = f"/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/{NS}/nodefeatures"
OBJECT = f"{COLLECTION}/nvidia-features-for-node1"
POD = f"/api/v1/namespaces/{NS}/pods/gfd-abc"
LABELS = {"nvidia.com/gpu.count": "8", "nvidia.com/vgpu.present": "false"}


def output(apiserver: FakeApiServer, tmp_path: Path, *extra: str, **env: str) -> NodeFeatureOutput:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    config = load_config(parse_command_line(
        ["--kubeconfig", kubeconfig, "--namespace", NS, "--node-name", "node1", *extra], env))
    out = NodeFeatureOutput.from_config(config, Metrics())
    out.request_timeout = (1.0, 0.5)
    return out


def daemonset_pod(apiserver: FakeApiServer) -> None:
    apiserver.put_object(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "gfd-abc", "namespace": NS, "uid": "pod-uid-1",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gfd-ds", "uid": "ds-uid-1",
                             "controller": True, "blockOwnerDeletion": True}]}})


def test_first_write_creates_upstreams_object(apiserver: FakeApiServer, tmp_path: Path,
                                              nfd_schemas: dict[str, Any]) -> None:
    daemonset_pod(apiserver)
    out = output(apiserver, tmp_path, "--pod-name", "gfd-abc")
    out.write(LABELS)
    assert [(r.method, r.path.split("?")[0]) for r in apiserver.requests()] == [
        ("GET", POD), ("GET", OBJECT), ("POST", COLLECTION)]
    posted = apiserver.requests("POST")[0].body
    assert posted == {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeature",
        "metadata": {"name": "nvidia-features-for-node1", "namespace": NS,
                     "labels": {"nfd.node.kubernetes.io/node-name": "node1"},
                     "ownerReferences": [
                         {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gfd-ds", "uid": "ds-uid-1",
                          "controller": True},
                         {"apiVersion": "v1", "kind": "Pod", "name": "gfd-abc", "uid": "pod-uid-1"}]},
        "spec": {"features": {"flags": {}, "attributes": {}, "instances": {}}, "labels": LABELS}}
    jsonschema.validate(posted, nfd_schemas["NodeFeature"])


def test_unchanged_labels_make_no_request_and_changes_are_one_put(apiserver: FakeApiServer, tmp_path: Path,
                                                                  nfd_schemas: dict[str, Any]) -> None:
    out = output(apiserver, tmp_path)
    out.write(LABELS)
    apiserver.clear_requests()
    for _ in range(50):
        assert not out.needs_resync()
    changed = LABELS | {"nvidia.com/gpu.count": "7"}
    out.write(changed)
    puts = apiserver.requests()
    assert [r.method for r in puts] == ["PUT"]
    assert puts[0].body["metadata"]["resourceVersion"] == "100"
    assert "ownerReferences" not in puts[0].body["metadata"]
    jsonschema.validate(puts[0].body, nfd_schemas["NodeFeature"])
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == changed  # type: ignore[index]


def test_conflict_rereads_and_retries(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    out.write(LABELS)
    other = apiserver.get_object(OBJECT)
    assert other is not None
    other["metadata"]["annotations"] = {"someone": "else"}
    apiserver.put_object(OBJECT, other)  # bumps resourceVersion behind our back
    apiserver.clear_requests()
    out.write(LABELS | {"nvidia.com/gpu.count": "4"})
    assert [(r.method, r.path) for r in apiserver.requests()] == [("PUT", OBJECT), ("GET", OBJECT), ("PUT", OBJECT)]
    stored = apiserver.get_object(OBJECT)
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"someone": "else"}  # other writers' metadata survives
    assert stored["spec"]["labels"]["nvidia.com/gpu.count"] == "4"


def test_create_race_already_exists(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    apiserver.fail("GET", OBJECT, status=404)  # looks absent ...
    apiserver.put_object(OBJECT, {"apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeature",
                                  "metadata": {"name": "nvidia-features-for-node1", "namespace": NS}})
    out.write(LABELS)  # ... POST gets 409 AlreadyExists, then GET + PUT
    assert [r.method for r in apiserver.requests()] == ["GET", "POST", "GET", "PUT"]
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == LABELS  # type: ignore[index]


@pytest.mark.parametrize(("status", "retry_after"), [(429, 7.0), (500, None), (503, 2.0)])
def test_server_errors_raise_retryable_output_errors(apiserver: FakeApiServer, tmp_path: Path, status: int,
                                                     retry_after: float | None) -> None:
    out = output(apiserver, tmp_path)
    apiserver.fail("GET", OBJECT, status=status, retry_after=retry_after)
    with pytest.raises(OutputError) as e:
        out.write(LABELS)
    assert e.value.retry_after == retry_after
    assert str(status) in str(e.value)
    out.write(LABELS)  # the next attempt works
    assert apiserver.get_object(OBJECT) is not None
    codes = {(s.labels["verb"], s.labels["code"]) for m in out.metrics.api_requests.collect()  # type: ignore[union-attr]
             for s in m.samples if s.name.endswith("_total")}
    assert ("get", str(status)) in codes and ("create", "201") in codes


def test_slow_response_beyond_the_timeout(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path)
    apiserver.fail("GET", OBJECT, status=0, delay=1.5)
    started = time.monotonic()
    with pytest.raises(OutputError, match="Timeout"):
        out.write(LABELS)
    assert time.monotonic() - started < 1.4
    out.write(LABELS)
    assert apiserver.get_object(OBJECT) is not None


def test_deleted_object_is_recreated_at_resync(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path, "--node-feature-resync", "200ms")
    out.write(LABELS)
    apiserver.delete_object(OBJECT)
    assert not out.needs_resync()
    time.sleep(0.25)
    assert out.needs_resync()
    out.write(LABELS)
    assert apiserver.get_object(OBJECT)["spec"]["labels"] == LABELS  # type: ignore[index]


def test_owner_references_skipped_without_daemonset_owner_or_pod(apiserver: FakeApiServer, tmp_path: Path) -> None:
    out = output(apiserver, tmp_path, "--pod-name", "missing-pod")
    out.write(LABELS)
    assert "ownerReferences" not in apiserver.get_object(OBJECT)["metadata"]  # type: ignore[index]


def test_required_node_name(apiserver: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    config = load_config(parse_command_line(["--kubeconfig", kubeconfig], {}))
    with pytest.raises(OutputError, match="required flag node-name not set"):
        NodeFeatureOutput.from_config(config)


def test_no_cluster_config_is_a_clear_error() -> None:
    config = load_config(parse_command_line(["--node-name", "n"], {}))
    with pytest.raises(OutputError, match="failed to create clientsets"):
        NodeFeatureOutput.from_config(config)
