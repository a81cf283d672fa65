"""The DRA driver's objects judged by the real API server (../shared/k8s/cluster: kube-apiserver v1.36.2 with
its default DRA gates): every ResourceSlice the pure function makes is accepted as written and reads back
unchanged, and ResourceClaims as the server returns them parse into what prepare needs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

from gfd.model import DeviceModel
from plugin.dra import taints
from plugin.dra.claims import AllocationResult, ClaimRef, PodRef, parse_claim
from plugin.dra.sharing import ConsumableShares
from plugin.dra.slices import pool
from tests import builders
from tests.helpers import simulated_model

NODE = "gpu-node-1"
GROUP, VERSION = "resource.k8s.io", "v1"
KINDS = {"resourceslices": "ResourceSlice", "deviceclasses": "DeviceClass", "resourceclaims": "ResourceClaim"}


@pytest.fixture(scope="module")
def api(dra_api: tuple[client.ApiClient, str]) -> client.ApiClient:
    return dra_api[0]


class Resources:
    """resource.k8s.io/v1 objects in their JSON form, through the official client's generic object API."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    def create(self, plural: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], **body}
        if namespace:
            return as_object(self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body))
        return as_object(self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body))

    def get(self, plural: str, name: str, namespace: str) -> dict[str, Any]:
        return as_object(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))

    def delete_all(self, plural: str) -> None:
        self.custom.delete_collection_cluster_custom_object(GROUP, VERSION, plural)


def as_object(value: object) -> dict[str, Any]:
    """The generic API answers `object`: a decoded JSON object."""
    assert isinstance(value, dict)
    return value


def big_mig_node() -> DeviceModel:
    """16 GPUs of 7 MIG devices each, with NVML's placements: the most counter sets and devices per slice."""
    def mig(j: int) -> Any:
        return replace(builders.mig(j, "1g.5gb", 7 + j), gi_profile_id=19, placement=(j, 1))
    return builders.model(*(builders.gpu(i, *(mig(j) for j in range(7))) for i in range(16)))


def without_time_added(spec: dict[str, Any]) -> dict[str, Any]:
    """The server stamps taints with timeAdded; everything else must read back as written."""
    back = copy.deepcopy(spec)
    for device in back.get("devices", ()):
        for taint in device.get("taints", ()):
            taint.pop("timeAdded", None)
    return back


CASES: dict[str, tuple[Callable[[], DeviceModel], str, bool]] = {
    "dgx-a100": (lambda: simulated_model("dgx-a100"), "disabled", False),
    "dgx-h100 shares=memory enforced by MPS, a fault": (lambda: simulated_model("dgx-h100"), "memory/mps", True),
    "a100-80gb-mig-mixed shares=memory enforced (MIG whole)": (lambda: simulated_model("a100-80gb-mig-mixed"),
                                                                "memory/mps", False),
    "dgx-h100 shares=4, a fault": (lambda: simulated_model("dgx-h100"), "4", True),
    "a100-mig-single shares=memory, a fault": (lambda: simulated_model("a100-mig-single"), "memory", True),
    "a100-80gb-mig-mixed unlimited": (lambda: simulated_model("a100-80gb-mig-mixed"), "unlimited", False),
    "gh200 (fabric)": (lambda: simulated_model("gh200"), "disabled", False),
    "16 GPUs x 7 MIG devices with placements": (big_mig_node, "disabled", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_api_server_accepts_every_slice_and_reads_it_back_unchanged(api: client.ApiClient, case: str) -> None:
    make, shares, faulty = CASES[case]
    model = make()
    health = taints.DeviceHealth({(model.gpus[0].uuid, -1, -1): (taints.xid(79),),
                                  (model.gpus[-1].uuid, -1, -1): (taints.gpu_lost(), taints.unmonitored())}) \
        if faulty else taints.HEALTHY
    node_uid = client.CoreV1Api(api).read_node(NODE).metadata.uid  # type: ignore[union-attr]
    resources = Resources(api)
    specs = pool(model, NODE, ConsumableShares.parse(*shares.split("/")), health).specs(1)
    assert specs
    try:
        for spec in specs:
            body = {"metadata": {"generateName": f"{NODE}-gpu.nvidia.com-", "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid,
                        "controller": True}]},
                    "spec": spec}
            try:
                created = resources.create("resourceslices", body)
            except client.ApiException as e:
                pytest.fail(f"{case}: the API server refused a slice: {json.loads(str(e.body))['message']}")
            assert without_time_added(created["spec"]) == spec
    finally:
        resources.delete_all("resourceslices")


def test_claims_parse_as_the_api_server_returns_them(api: client.ApiClient) -> None:
    """A claim with a subrequest, a shared device with consumed capacity and an admin-access request, its
    allocation written as the scheduler writes it, read back through the official client."""
    resources = Resources(api)
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name="dra", labels={"resource.kubernetes.io/admin-access": "true"})))
    resources.create("deviceclasses", {"metadata": {"name": "gpu.nvidia.com"}, "spec": {"selectors": [{"cel": {
        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}]}})
    claim = {"metadata": {"name": "training", "namespace": "dra"}, "spec": {"devices": {"requests": [
        {"name": "gpu", "firstAvailable": [{"name": "big", "deviceClassName": "gpu.nvidia.com",
                                            "capacity": {"requests": {"memory": "4Gi"}}}]},
        {"name": "monitor", "exactly": {"deviceClassName": "gpu.nvidia.com", "adminAccess": True}}]}}}
    created = resources.create("resourceclaims", claim, "dra")
    assert not parse_claim(created).allocated
    share = "0b6a3f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    created["status"] = {"allocation": {
        "devices": {"results": [
            {"request": "gpu/big", "driver": "gpu.nvidia.com", "pool": NODE, "device": "gpu-0", "shareID": share,
             "consumedCapacity": {"memory": "4Gi", "compute": "0"}},
            {"request": "monitor", "driver": "gpu.nvidia.com", "pool": NODE, "device": "gpu-1", "adminAccess": True}]},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [NODE]}]}]}},
        "reservedFor": [{"resource": "pods", "name": "train-0", "uid": "5e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b"}]}
    resources.custom.replace_namespaced_custom_object_status(GROUP, VERSION, "dra", "resourceclaims", "training",
                                                            created)
    read = resources.get("resourceclaims", "training", "dra")
    got = parse_claim(read)
    assert got.ref == ClaimRef("dra", "training", created["metadata"]["uid"]) and got.allocated
    assert got.results == (
        AllocationResult("gpu/big", "gpu.nvidia.com", NODE, "gpu-0", share, False, {"memory": "4Gi", "compute": "0"}),
        AllocationResult("monitor", "gpu.nvidia.com", NODE, "gpu-1", None, True))
    assert got.pods == (PodRef("train-0", "5e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b"),)
    assert [r.base_request for r in got.results] == ["gpu", "monitor"]
