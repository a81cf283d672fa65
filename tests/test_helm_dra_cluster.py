"""The chart's DRA mode on the real control plane (../shared/k8s/cluster --scheduler: kube-apiserver,
kube-scheduler and kube-controller-manager v1.36.2, authorization Node,RBAC).

The rendered ServiceAccounts, RBAC, admission policy and DeviceClasses are applied as they are; every request
the DRA driver makes is sent with its ServiceAccount's pod-bound token through gfd/kube, the client the driver
uses (each allowed), and what it must not do is refused. The real scheduler then places the DaemonSets' pods
(as the DaemonSet controller asks it: one pod per node) one driver per node, and serves an unchanged
`nvidia.com/gpu: 1` pod through DRA on a DRA node and through the device plugin on a device-plugin node.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, utils

from gfd.kube.client import Kube, connect
from gfd.kube.errors import Forbidden, KubeError
from plugin.dra.slices import pool
from tests.helpers import eventually, simulated_model
from tests.requirements import require_commands, require_shared

ROOT = Path(__file__).resolve().parent.parent
NS = "nvidia-dra"
RELEASE = "nvdp"
LABEL = "nvidia.com/gpu.deploy.dra-driver"
DRA_ACCOUNT = "nvdp-nvidia-device-plugin-dra-service-account"
PLUGIN_ACCOUNT = "nvdp-nvidia-device-plugin-service-account"
DRA, PLUGIN = "nvdp-nvidia-device-plugin-dra-kubelet-plugin", "nvdp-nvidia-device-plugin"
MPS, GFD = "nvdp-nvidia-device-plugin-mps-control-daemon", "nvdp-nvidia-device-plugin-gpu-feature-discovery"
GPU_NODE = {"feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/mps.capable": "true"}
# Nodes without a kubelet: the two DRA nodes carry the label that gives them to the DRA driver.
NODES = {"dra-node": {**GPU_NODE, LABEL: "true"}, "dra-mig-node": {**GPU_NODE, LABEL: "true"},
         "plugin-node": GPU_NODE, "cpu-node": {}}
WORKLOADS = "workloads"


@dataclass
class World:
    dir: Path
    env: dict[str, str]
    api: client.ApiClient
    objects: list[dict[str, Any]]

    # Typed Any: these tests send objects in their JSON form (dicts), which the client accepts as they are.
    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def resource(self) -> Any:
        return client.ResourceV1Api(self.api)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    cluster = require_shared("k8s", "cluster") / "cluster"
    require_commands("etcd", "openssl", "curl", "xz")
    directory = Path(tempfile.mkdtemp(prefix="k8s-dra-chart-"))
    try:
        kubeconfig = subprocess.run([str(cluster), "up", str(directory), "--scheduler"], check=True,
                                    capture_output=True, text=True, timeout=180).stdout.strip().splitlines()[-1]
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
        env = dict(line.split("=", 1) for line in (directory / "env").read_text().splitlines() if "=" in line)
        with client.ApiClient(configuration) as api:
            world = World(directory, env, api, render({"dra": {"enabled": True}, "gfd": {"enabled": True}}))
            _set_up(world)
            _wait_for_the_policy(world, Path(tempfile.mkdtemp(dir=directory)))
            yield world
    finally:
        subprocess.run([str(cluster), "down", str(directory)], check=False, capture_output=True, timeout=180)
        shutil.rmtree(directory, ignore_errors=True)  # `down` leaves the logs


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    import helm_python

    out = helm_python.Chart.load(str(ROOT / "helm")).render(values, name=RELEASE, namespace=NS)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def _set_up(world: World) -> None:
    core = world.core
    for namespace in (NS, WORKLOADS):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    for obj in world.objects:
        if obj["kind"] not in ("DaemonSet", "ServiceMonitor"):  # the DaemonSets' pods are placed by the tests
            utils.create_from_dict(world.api, obj,  # type: ignore[no-untyped-call]
                                   namespace=obj["metadata"].get("namespace"))
    for name, labels in NODES.items():
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
            name=name, labels={**labels, "kubernetes.io/hostname": name}, annotations={})))
        room = {"cpu": "8", "memory": "32Gi", "pods": "110"}
        if name == "plugin-node":
            room["nvidia.com/gpu"] = "8"  # what the device plugin's registration gives the node
        core.patch_node_status(name, {"status": {"capacity": room, "allocatable": room}})


def _wait_for_the_policy(world: World, tmp_path: Path) -> None:
    """A new admission policy takes a moment to be enforced: until the driver's write of another node's slice
    is refused by it."""
    kube = kube_with(world, token(world, DRA_ACCOUNT, driver_pod(world, "dra-node")), tmp_path)
    resource = client.ResourceV1Api(kube.api_client)

    def enforced() -> bool:
        try:
            made = kube.request("create", resource.create_resource_slice_with_http_info, slice_body("cpu-node"))
        except Forbidden:
            return True
        world.resource.delete_resource_slice(made.metadata.name)
        return False

    try:
        eventually(enforced, timeout=30)
    finally:
        kube.close()


def driver_pod(world: World, node: str, account: str = DRA_ACCOUNT) -> Any:
    """A pod of `account` bound to `node`, as the DaemonSet's pod there is: its tokens name the node."""
    return world.core.create_namespaced_pod(NS, client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="token-holder-"),
        spec=client.V1PodSpec(node_name=node, service_account_name=account, automount_service_account_token=False,
                              containers=[client.V1Container(name="c", image="docker.io/local/pause:1")])))


def token(world: World, account: str, pod: Any) -> str:
    """A TokenRequest token of `account`, bound to `pod` as the kubelet's projected token is (or to nothing)."""
    bound = None if pod is None else client.V1BoundObjectReference(
        kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[], expiration_seconds=3600, bound_object_ref=bound))
    return str(world.core.create_namespaced_service_account_token(account, NS, request).status.token)


def token_kubeconfig(world: World, bearer: str, tmp_path: Path) -> Path:
    """A kubeconfig holding `bearer`, as an operator (or the driver, for doctor) would pass one."""
    kubeconfig = tmp_path / f"token-{len(list(tmp_path.glob('token-*')))}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "driver",
        "clusters": [{"name": "test", "cluster": {"server": world.env["API_URL"],
                                                  "certificate-authority": str(world.dir / "pki" / "serving.crt")}}],
        "users": [{"name": "driver", "user": {"token": bearer}}],
        "contexts": [{"name": "driver", "context": {"cluster": "test", "user": "driver"}}]}))
    return kubeconfig


def kube_with(world: World, bearer: str, tmp_path: Path, answers: list[tuple[str, str]] | None = None) -> Kube:
    """gfd/kube's client with `bearer`, as the driver builds it; `answers` records each request's (verb, status)."""
    return connect(str(token_kubeconfig(world, bearer, tmp_path)), "nvidia-dra-plugin",
                   count=None if answers is None else lambda verb, code: answers.append((verb, code)))


def slice_body(node: str, profile: str = "dgx-a100", owner_uid: str = "") -> dict[str, Any]:
    """The first ResourceSlice the driver publishes for a simulated `profile` on `node`."""
    metadata: dict[str, Any] = {"generateName": f"{node}-gpu.nvidia.com-"}
    if owner_uid:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": owner_uid,
                                        "controller": True}]
    spec = pool(simulated_model(profile), node).specs(1)[-1]  # counter slices come first; the devices last
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": metadata, "spec": spec}


def claim_body(name: str, device_class: str) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}}


def test_every_request_the_driver_makes_is_allowed(world: World, tmp_path: Path) -> None:
    answers: list[tuple[str, str]] = []
    kube = kube_with(world, token(world, DRA_ACCOUNT, driver_pod(world, "dra-node")), tmp_path, answers)
    core, resource = client.CoreV1Api(kube.api_client), client.ResourceV1Api(kube.api_client)
    own = "spec.nodeName=dra-node"
    try:
        node = kube.request("get", core.read_node_with_http_info, "dra-node")  # the owner of its slices
        listed = kube.request("list", resource.list_resource_slice_with_http_info, field_selector=own)
        created = kube.request("create", resource.create_resource_slice_with_http_info,
                               slice_body("dra-node", owner_uid=node.metadata.uid))
        changed = kube.api_client.sanitize_for_serialization(created)
        changed["spec"]["pool"]["generation"] = 2
        kube.request("update", resource.replace_resource_slice_with_http_info, created.metadata.name, changed)
        events = list(kube.watch_events("watch", resource.list_resource_slice,
                                        resource_version=listed.metadata.resource_version, timeout_s=1,
                                        field_selector=own))
        assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
        # Claims: the watch cache prepare reads from, and a single claim.
        claims = kube.request("list", resource.list_resource_claim_for_all_namespaces_with_http_info)
        world.resource.create_namespaced_resource_claim(WORKLOADS, claim_body("one-gpu", "gpu.nvidia.com"))
        added = list(kube.watch_events("watch", resource.list_resource_claim_for_all_namespaces,
                                       resource_version=claims.metadata.resource_version, timeout_s=1))
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in added] == [("ADDED", "one-gpu")]
        got = kube.request("get", resource.read_namespaced_resource_claim_with_http_info, "one-gpu", WORKLOADS)
        assert got.spec.devices.requests[0].exactly.device_class_name == "gpu.nvidia.com"
        kube.request("delete", resource.delete_resource_slice_with_http_info, created.metadata.name)
    finally:
        kube.close()
    assert [verb for verb, _ in answers] == ["get", "list", "create", "update", "watch", "list", "watch", "get",
                                             "delete"]
    assert all(code.startswith("2") for _, code in answers), answers


def refused(request: Callable[[], Any]) -> Forbidden:
    with pytest.raises(KubeError) as e:
        request()
    assert isinstance(e.value, Forbidden) and e.value.status == 403, e.value
    return e.value


def e_text(error: KubeError) -> str:
    """The server's message, which the typed error chains (its reason is the status line's)."""
    cause = error.__cause__
    return str(getattr(cause, "body", "")) or str(error)


def test_what_the_driver_must_not_do_is_refused(world: World, tmp_path: Path) -> None:
    kube = kube_with(world, token(world, DRA_ACCOUNT, driver_pod(world, "dra-node")), tmp_path)
    core, resource = client.CoreV1Api(kube.api_client), client.ResourceV1Api(kube.api_client)
    others = world.resource.create_resource_slice(slice_body("plugin-node"))
    claim = world.resource.create_namespaced_resource_claim(WORKLOADS, claim_body("not-yours", "gpu.nvidia.com"))
    try:
        # Another node's slices, and slices of no node (the admission policy: RBAC cannot name the node).
        denied = refused(lambda: kube.request("create", resource.create_resource_slice_with_http_info,
                                              slice_body("plugin-node")))
        assert "the DRA driver on node dra-node may write only that node's ResourceSlices, not node " \
               "plugin-node's" in e_text(denied)
        body = kube.api_client.sanitize_for_serialization(others)
        refused(lambda: kube.request("update", resource.replace_resource_slice_with_http_info,
                                     others.metadata.name, body))
        refused(lambda: kube.request("delete", resource.delete_resource_slice_with_http_info, others.metadata.name))
        # Claims are read, never written (the scheduler allocates them; the driver writes no status).
        claim_body_back = kube.api_client.sanitize_for_serialization(claim)
        refused(lambda: kube.request("update", resource.replace_namespaced_resource_claim_with_http_info,
                                     "not-yours", WORKLOADS, claim_body_back))
        refused(lambda: kube.request("update", resource.replace_namespaced_resource_claim_status_with_http_info,
                                     "not-yours", WORKLOADS, claim_body_back))
        refused(lambda: kube.request("delete", resource.delete_namespaced_resource_claim_with_http_info,
                                     "not-yours", WORKLOADS))
        # Nothing else: pods (of its node or another), secrets, nodes beyond a get, the classes.
        refused(lambda: kube.request("list", core.list_pod_for_all_namespaces_with_http_info,
                                     field_selector="spec.nodeName=plugin-node"))
        refused(lambda: kube.request("list", core.list_namespaced_secret_with_http_info, NS))
        refused(lambda: kube.request("list", core.list_node_with_http_info))
        refused(lambda: kube.request("patch", core.patch_node_with_http_info, "dra-node",
                                     {"metadata": {"labels": {LABEL: "false"}}}))
        refused(lambda: kube.request("delete", resource.delete_device_class_with_http_info, "gpu.nvidia.com"))
        refused(lambda: kube.request("list", resource.list_device_class_with_http_info))  # get only (doctor's)
    finally:
        kube.close()
        world.resource.delete_resource_slice(others.metadata.name)



def test_only_the_drivers_pod_bound_token_writes_slices(world: World, tmp_path: Path) -> None:
    """A token of the driver's account not bound to a pod names no node; the other programs' account writes
    no slices at all."""
    unbound = kube_with(world, token(world, DRA_ACCOUNT, None), tmp_path)
    plugin = kube_with(world, token(world, PLUGIN_ACCOUNT, driver_pod(world, "dra-node", PLUGIN_ACCOUNT)), tmp_path)
    try:
        denied = refused(lambda: unbound.request("create", client.ResourceV1Api(
            unbound.api_client).create_resource_slice_with_http_info, slice_body("dra-node")))
        assert "this token names no node" in e_text(denied)
        refused(lambda: plugin.request("create", client.ResourceV1Api(
            plugin.api_client).create_resource_slice_with_http_info, slice_body("dra-node")))
    finally:
        unbound.close()
        plugin.close()


def daemon_pod(template: dict[str, Any], node: str) -> dict[str, Any]:
    """The pod the DaemonSet controller asks the scheduler to place on `node`: the template with each node
    selector term's matchFields set to that node (its ReplaceDaemonSetPodNodeNameNodeAffinity), and the
    tolerations it adds; these Nodes have no kubelet, so they are also tolerated as unreachable."""
    spec = copy.deepcopy(template["spec"])
    by_name = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    required = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": [{}]})
    for term in required["nodeSelectorTerms"]:
        term["matchFields"] = by_name
    spec["tolerations"] = [*spec.get("tolerations", []),
                           *({"key": f"node.kubernetes.io/{taint}", "operator": "Exists"}
                             for taint in ("not-ready", "unreachable", "unschedulable"))]
    spec["automountServiceAccountToken"] = False
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "placed-", "labels": {"test": "placement"}},
            "spec": spec}


def placement(world: World, template: dict[str, Any], node: str) -> bool:
    """Whether the real scheduler binds the DaemonSet's pod for `node` there (False: Unschedulable)."""
    pod = world.core.create_namespaced_pod(NS, daemon_pod(template, node))
    name = pod.metadata.name

    def decided() -> bool:
        status = world.core.read_namespaced_pod(name, NS)
        scheduled = [c for c in (status.status.conditions or []) if c.type == "PodScheduled"]
        return bool(status.spec.node_name) or bool(scheduled and scheduled[0].reason == "Unschedulable")

    eventually(decided, timeout=30)
    bound: bool = world.core.read_namespaced_pod(name, NS).spec.node_name == node
    world.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    return bound


def templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] == "DaemonSet"}


def test_the_scheduler_places_one_driver_per_node(world: World) -> None:
    by_daemonset = templates(world.objects)
    placed = {name: {node for node in NODES if placement(world, template, node)}
              for name, template in by_daemonset.items()}
    assert placed == {DRA: {"dra-node", "dra-mig-node"}, PLUGIN: {"plugin-node"}, MPS: {"plugin-node"},
                      GFD: {"dra-node", "dra-mig-node", "plugin-node"}}  # GFD keeps labelling DRA nodes
    # Moving a node to DRA is labelling it: its device plugin no longer fits there, the DRA driver does.
    world.core.patch_node("plugin-node", {"metadata": {"labels": {LABEL: "true"}}})
    try:
        assert {name: placement(world, by_daemonset[name], "plugin-node") for name in (DRA, PLUGIN, MPS, GFD)} == {
            DRA: True, PLUGIN: False, MPS: False, GFD: True}
    finally:
        world.core.patch_node("plugin-node", {"metadata": {"labels": {LABEL: None}}})


def gpu_pod(name: str, node: str, limits: dict[str, str] | None = None, claim: str = "") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "cuda", "image": "docker.io/local/busybox:1"}
    spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [container],
                            "automountServiceAccountToken": False,
                            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
                                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}
    if limits:
        container["resources"] = {"limits": limits}
    if claim:
        container["resources"] = {"claims": [{"name": "gpu"}]}
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def scheduled(world: World, name: str) -> Any:
    eventually(lambda: bool(world.core.read_namespaced_pod(name, WORKLOADS).spec.node_name), timeout=30)
    return world.core.read_namespaced_pod(name, WORKLOADS)


def allocated_devices(world: World, claim: str) -> list[tuple[str, str, str]]:
    results = world.resource.read_namespaced_resource_claim(claim, WORKLOADS).status.allocation.devices.results
    return [(r.driver, r.pool, r.device) for r in results]


def test_an_unchanged_gpu_pod_is_served_through_dra_on_dra_nodes(world: World) -> None:
    """The DeviceClasses' selectors and extendedResourceName read by the real scheduler against the slices the
    driver publishes (a DGX A100, and an A100 node in MIG mode)."""
    for node, profile in (("dra-node", "dgx-a100"), ("dra-mig-node", "a100-mig-single")):
        for spec in pool(simulated_model(profile), node).specs(1):
            world.resource.create_resource_slice({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                                                  "metadata": {"generateName": f"{node}-"}, "spec": spec})
    create = world.core.create_namespaced_pod
    create(WORKLOADS, gpu_pod("unchanged-on-dra", "dra-node", {"nvidia.com/gpu": "1"}))
    create(WORKLOADS, gpu_pod("unchanged-on-plugin", "plugin-node", {"nvidia.com/gpu": "1"}))
    on_dra = scheduled(world, "unchanged-on-dra")
    extended = on_dra.status.extended_resource_claim_status
    assert extended is not None and extended.request_mappings[0].resource_name == "nvidia.com/gpu"
    [(driver, pool_name, device)] = allocated_devices(world, extended.resource_claim_name)
    assert (driver, pool_name) == ("gpu.nvidia.com", "dra-node") and device.startswith("gpu-")
    # Where the node's allocatable lists nvidia.com/gpu, the device plugin serves it: no claim.
    assert scheduled(world, "unchanged-on-plugin").status.extended_resource_claim_status is None
    # The MIG class picks a MIG device; the GPU class none of them (a MIG-only node cannot serve nvidia.com/gpu).
    world.resource.create_namespaced_resource_claim(WORKLOADS, claim_body("a-mig-device", "mig.nvidia.com"))
    create(WORKLOADS, gpu_pod("mig-claim", "dra-mig-node", claim="a-mig-device"))
    scheduled(world, "mig-claim")
    [(driver, pool_name, device)] = allocated_devices(world, "a-mig-device")
    assert (driver, pool_name) == ("gpu.nvidia.com", "dra-mig-node") and "-mig-1g5gb-" in device
    create(WORKLOADS, gpu_pod("unchanged-on-mig", "dra-mig-node", {"nvidia.com/gpu": "1"}))

    def unschedulable() -> bool:
        conditions = world.core.read_namespaced_pod("unchanged-on-mig", WORKLOADS).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    eventually(unschedulable, timeout=30)


def test_doctor_reads_the_dra_set_up_from_the_api(world: World, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`nvidia-dra-plugin doctor` with the driver's own token (as in its pod): resource.k8s.io/v1 served, the
    chart's DeviceClasses, and the node's slices against the GPUs it finds."""
    import json

    from gfd.doctor.checks import DRA as DRA_DRIVER
    from gfd.doctor.cli import main as doctor
    from plugin.dra.config import DRA_OPTIONS

    path = token_kubeconfig(world, token(world, DRA_ACCOUNT, driver_pod(world, "dra-node")), tmp_path)
    world.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="doctor-node", labels={},
                                                                      annotations={})))

    def api_checks() -> dict[str, tuple[str, str]]:
        doctor("nvidia-dra-plugin", DRA_OPTIONS, ["--simulate=dgx-a100", "--output=json", f"--kubeconfig={path}",
                                                  "--node-name=doctor-node"], {}, DRA_DRIVER)
        checks = json.loads(capsys.readouterr().out)["checks"]
        return {c["id"]: (c["verdict"], c["evidence"]) for c in checks if c["id"].startswith("dra.")
                and c["id"] != "dra.kubelet-plugin"}

    assert api_checks() == {
        "dra.api": ("ok", "resource.k8s.io served in v1"),  # 1.36 serves no beta version by default
        "dra.device-classes": ("ok", "DeviceClass gpu.nvidia.com (extendedResourceName nvidia.com/gpu), "
                                     "mig.nvidia.com"),
        "dra.resourceslices": ("failed", "no ResourceSlice of gpu.nvidia.com for node doctor-node")}
    spec = pool(simulated_model("dgx-a100"), "doctor-node").specs(1)[0]
    spec["devices"] = [d for d in spec["devices"] if d["name"] != "gpu-7"]  # one GPU not published
    partial = world.resource.create_resource_slice({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                                                    "metadata": {"generateName": "doctor-node-"}, "spec": spec})
    assert api_checks()["dra.resourceslices"] == (
        "warning", "1 ResourceSlices of gpu.nvidia.com for node doctor-node, 7 devices; not published: gpu-7")
    world.resource.delete_resource_slice(partial.metadata.name)
    world.resource.create_resource_slice(slice_body("doctor-node"))
    assert api_checks()["dra.resourceslices"] == (
        "ok", "1 ResourceSlices of gpu.nvidia.com for node doctor-node, 8 devices")
