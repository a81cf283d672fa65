"""The DRA driver as the chart's DRA mode deploys it (its DaemonSet's container, with its ServiceAccount's
pod-bound token, its RBAC and admission policy) on a real kubelet (v1.36.2, containerd 1.7 with CDI),
kube-scheduler and kube-controller-manager, with NVIDIA's DeviceClasses: the driver registers and publishes its
slices; pods with ResourceClaimTemplates (one GPU; two picked by productName; a MIG device) and an unchanged pod
asking `nvidia.com/gpu: 1` (a DeviceClass with extendedResourceName) run with exactly their devices' nodes and
NVIDIA_VISIBLE_DEVICES=void; a deleted pod's claim is unprepared; a killed and restarted driver, and a
restarted kubelet, lose nothing; a GPU with an XID is tainted NoSchedule and the scheduler leaves it to claims
that tolerate the taint.

The node is simulated (its NVML and driver files); a driver root like the simulated one stands in for the
host's (the chart's nvidiaDriverRoot), with character devices where the simulation has placeholders, so the
container runtime injects real device nodes. The hook the specs name is a stand-in that records its arguments
(nvidia-ctk is not installable here)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from gfd.discovery.simulated.driver_root import materialise_driver_root
from gfd.discovery.simulated.profiles import build_node
from gfd.discovery.simulated.sysfs_tree import mig_minors
from tests.e2e.conftest import K8S, NODE, Cluster, render
from tests.e2e.podrunner import PodRunner
from tests.helpers import eventually, http_get

NS = "dra-e2e"  # the workloads
DRIVER_NS, RELEASE = "nvidia-dra", "dra"
DAEMONSET, CONTAINER = f"{RELEASE}-nvidia-device-plugin-dra-kubelet-plugin", "nvidia-dra-plugin-ctr"
METRICS = "http://127.0.0.1:9104"  # the chart's dra.metrics.port, on every interface
GROUP, VERSION = "resource.k8s.io", "v1"
REGISTRY, PLUGINS, CDI_DIR = "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/run/cdi"
A100, H100 = "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"
# minors 0-2: A100, 3-4: H100, 5: an A100 split into MIG devices
PROFILE = {"name": "dra-e2e", "machine": "DGX", "driver_version": "550.54.15", "cuda_driver_version": 12040,
           "gpus": [{"model": "A100-SXM4-40GB", "count": 3}, {"model": "H100-80GB-HBM3", "count": 2},
                    {"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"]}]}
# NVIDIA's chart's DeviceClasses (shared/reference/dra.md §3), as claims written for its driver expect them.
DEVICE_CLASSES: list[dict[str, Any]] = [
    {"metadata": {"name": "gpu.nvidia.com"}, "spec": {"extendedResourceName": "nvidia.com/gpu", "selectors": [{"cel": {
        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}]}},
    {"metadata": {"name": "mig.nvidia.com"}, "spec": {"selectors": [{"cel": {
        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'"}}]}}]
# The driver's nodes as nvidia-modprobe numbers them; the capability and UVM majors are the test's own.
CONTROL = {"nvidiactl": (195, 255), "nvidia-modeset": (195, 254), "nvidia-uvm": (236, 0), "nvidia-uvm-tools": (236, 1)}
CAPS_MAJOR = 237
SHOW = ("for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c $n ] && stat -c 'node %n %t %T' $n; done; "
        "echo env NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; sleep 3600")


@dataclass
class Driver:
    """The chart's driver container, run by the pod runner, and what it reads and writes."""

    runner: PodRunner
    extra_env: dict[str, str]
    work: Path
    events: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.runner.start(CONTAINER, self.extra_env)

    def healthy(self) -> bool:
        answer = http_get(f"{METRICS}/healthz")
        return answer is not None and answer[0] == 200

    def log(self) -> str:
        """This start's log."""
        return self.runner.log(CONTAINER)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


def _device_nodes(driver_root: Path, caps: dict[str, int]) -> None:
    """The simulated driver root's placeholders as character devices (needs root)."""
    by_minor = {f"nvidia-cap{m}": (CAPS_MAJOR, m) for m in caps.values()}
    for path in [p for p in (driver_root / "dev").rglob("*") if p.is_file()]:
        number = by_minor.get(path.name) or CONTROL.get(path.name) or (195, int(path.name.removeprefix("nvidia")))
        path.unlink()
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*number))


@pytest.fixture(scope="module")
def driver(cluster: Cluster) -> Iterator[Driver]:
    work = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))
    events = work / "xids"
    events.write_text("")
    profile = work / "node.yaml"
    profile.write_text(yaml.safe_dump({**PROFILE, "events_file": str(events)}))
    host_driver_root = work / "driver-root"
    caps = {key: int(minor) for key, _, minor in (line.rpartition(" ") for line in mig_minors(6).splitlines())}
    materialise_driver_root(build_node(PROFILE, "e2e"), str(host_driver_root), caps)
    _device_nodes(host_driver_root, caps)
    hook = work / "nvidia-cdi-hook"
    hook.write_text(f"#!/bin/sh\necho \"$@\" >> {work}/hooks.log\n")
    hook.chmod(0o755)
    resource = client.CustomObjectsApi(cluster.api)
    for device_class in DEVICE_CLASSES:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceClass", **device_class}
        resource.create_cluster_custom_object(GROUP, VERSION, "deviceclasses", body)
    for namespace in (NS, DRIVER_NS):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    objects = render({"dra": {"enabled": True, "deviceClasses": False}, "devicePlugin": {"enabled": False},
                      "nvidiaDriverRoot": str(host_driver_root), "cdi": {"nvidiaHookPath": str(hook)}},
                     DRIVER_NS, RELEASE)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    template = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == DAEMONSET)
    # Bound to the GPU node, so that its token names the node the admission policy lets it write slices of; the
    # kubelet there cannot pull the chart's image, so only the runner runs it.
    runner = PodRunner(cluster.core, template["spec"]["template"], f"{DAEMONSET}-e2e", DRIVER_NS, NODE,
                       cluster.api_port, cluster.ca_file,
                       real_host_paths=(REGISTRY, PLUGINS, CDI_DIR, str(host_driver_root)))
    # The additions to the rendered env: a simulated node; health settled within the test's time.
    extra = {"DRA_SIMULATE": str(profile), "DRA_HEALTH_RECOVERY_PERIOD": "10s", "DRA_HEALTH_PROBE_INTERVAL": "1s"}
    d = Driver(runner, extra, work, events)
    d.start()
    try:
        took = eventually(d.healthy, timeout=30)
        print(f"registered and published {took:.2f} s after the start")
        yield d
    finally:
        print(d.log()[-5000:])
        runner.stop()
        for device_class in DEVICE_CLASSES:  # the next suites' pods ask nvidia.com/gpu of the device plugin
            resource.delete_cluster_custom_object(GROUP, VERSION, "deviceclasses", device_class["metadata"]["name"])


# -- the API's view ---------------------------------------------------------------------------------------------
def slices(cluster: Cluster) -> list[dict[str, Any]]:
    answer = client.CustomObjectsApi(cluster.api).list_cluster_custom_object(
        GROUP, VERSION, "resourceslices", field_selector=f"spec.nodeName={NODE}")
    assert isinstance(answer, dict)
    return list(answer["items"])


def published(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices(cluster) for d in s["spec"].get("devices", ())}


def claim_template(name: str, device_class: str, count: int = 1, cel: str = "",
                   tolerate_xid: bool = False) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount", "count": count}
    if cel:
        exactly["selectors"] = [{"cel": {"expression": cel}}]
    if tolerate_xid:
        exactly["tolerations"] = [{"key": "gpu.nvidia.com/xid", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpus", "exactly": exactly}]}}}}


def pod(name: str, claim_template_name: str = "", limits: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "cuda", "image": "docker.io/local/busybox:1", "imagePullPolicy": "Never",
                                 "command": ["/bin/sh", "-c", SHOW]}
    spec: dict[str, Any] = {"hostNetwork": True, "automountServiceAccountToken": False,
                            "terminationGracePeriodSeconds": 0, "restartPolicy": "Never", "containers": [container]}
    if claim_template_name:
        spec["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": claim_template_name}]
        container["resources"] = {"claims": [{"name": "gpus"}]}
    if limits:
        container["resources"] = {"limits": limits}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def create(cluster: Cluster, *objects: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    for obj in objects:
        if obj["kind"] == "Pod":
            cluster.core.create_namespaced_pod(NS, cast(Any, obj))  # the client sends a dict as it is
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "resourceclaimtemplates", obj)


def phase(cluster: Cluster, name: str) -> str:
    return str(getattr(cluster.core.read_namespaced_pod(name, NS).status, "phase", ""))


def running(cluster: Cluster, *names: str, timeout: float = 60) -> None:
    """Wait for the pods to run. A kubelet can ask for a pod's claim before the API server's Node authorizer
    knows that the pod is bound to it ("no relationship found between node ... and this object"); it would try
    again at its next periodic sync, a minute later, but any update of the pod makes it sync the pod at once:
    a pod that is not running yet gets an annotation every few seconds."""
    for name in names:
        started = nudged = time.monotonic()
        while phase(cluster, name) != "Running":
            assert time.monotonic() - started < timeout, f"pod {name} not running after {timeout} s"
            time.sleep(0.1)
            if time.monotonic() - nudged > 5:
                nudged = time.monotonic()
                cluster.core.patch_namespaced_pod(name, NS, {"metadata": {"annotations": {"e2e/nudged": str(nudged)}}})


def shown(cluster: Cluster, name: str) -> tuple[dict[str, tuple[int, int]], str]:
    """The pod's device nodes (name -> major, minor) and NVIDIA_VISIBLE_DEVICES, as its container saw them."""
    log = ""

    def printed() -> bool:
        nonlocal log
        log = cluster.core.read_namespaced_pod_log(name, NS)
        return "env NVIDIA_VISIBLE_DEVICES=" in log

    eventually(printed, timeout=30)
    nodes = {os.path.basename(words[1]): (int(words[2], 16), int(words[3], 16))
             for words in (line.split() for line in log.splitlines() if line.startswith("node "))}
    visible = next(line.split("=", 1)[1] for line in log.splitlines() if line.startswith("env NVIDIA_VISIBLE"))
    return nodes, visible


def allocated(cluster: Cluster, pod_name: str) -> list[str]:
    """The devices the scheduler allocated to the pod's claim (from its template, or for its extended resource)."""
    claims = client.CustomObjectsApi(cluster.api).list_namespaced_custom_object(GROUP, VERSION, NS, "resourceclaims")
    assert isinstance(claims, dict)
    for claim in claims["items"]:
        owners = claim["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Pod" and o["name"] == pod_name for o in owners):
            return [r["device"] for r in claim["status"]["allocation"]["devices"]["results"]]
    raise AssertionError(f"no claim of pod {pod_name}")


def gpu_nodes(nodes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {n: number for n, number in nodes.items() if n not in CONTROL}


def spec_files() -> set[str]:
    return set(os.listdir(CDI_DIR))


# -- scenarios ----------------------------------------------------------------------------------------------------
def test_the_driver_publishes_the_nodes_devices(cluster: Cluster, driver: Driver) -> None:
    devices = published(cluster)
    assert sorted(devices) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5-mig-1g5gb-19-2",
                               "gpu-5-mig-1g5gb-19-3", "gpu-5-mig-2g10gb-14-0", "gpu-5-mig-3g20gb-9-4"]
    assert devices["gpu-3"]["attributes"]["productName"] == {"string": H100}
    (pool_slice,) = [s for s in slices(cluster) if "devices" in s["spec"]]
    assert pool_slice["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert "registered with the kubelet" in driver.log()


def test_pods_get_exactly_their_devices(cluster: Cluster, driver: Driver) -> None:
    """Two H100s by productName first (so no other claim takes one), then the others at once."""
    h100 = f"device.attributes['gpu.nvidia.com'].productName == '{H100}'"
    create(cluster, claim_template("two-h100", "gpu.nvidia.com", 2, h100), pod("two-h100", "two-h100"))
    running(cluster, "two-h100")
    a100 = f"device.attributes['gpu.nvidia.com'].productName == '{A100}'"
    small = "device.attributes['gpu.nvidia.com'].profile == '1g.5gb'"
    create(cluster, claim_template("one-gpu", "gpu.nvidia.com", 1, a100), pod("one-gpu", "one-gpu"),
           claim_template("one-mig", "mig.nvidia.com", 1, small), pod("one-mig", "one-mig"),
           pod("unchanged", limits={"nvidia.com/gpu": "1"}))
    running(cluster, "one-gpu", "one-mig", "unchanged")
    for name in ("two-h100", "one-gpu", "unchanged"):
        nodes, visible = shown(cluster, name)
        minors = sorted(int(d.removeprefix("gpu-")) for d in allocated(cluster, name))
        assert gpu_nodes(nodes) == {f"nvidia{m}": (195, m) for m in minors}, name
        assert {n: nodes[n] for n in CONTROL} == CONTROL and visible == "void", name
    assert sorted(allocated(cluster, "two-h100")) == ["gpu-3", "gpu-4"]
    (mig,) = allocated(cluster, "one-mig")
    assert mig in ("gpu-5-mig-1g5gb-19-2", "gpu-5-mig-1g5gb-19-3")
    nodes, visible = shown(cluster, "one-mig")
    caps = {n: number for n, number in gpu_nodes(nodes).items() if n.startswith("nvidia-cap")}
    assert set(gpu_nodes(nodes)) - set(caps) == {"nvidia5"} and len(caps) == 2 and visible == "void"
    assert all(major == CAPS_MAJOR for major, _ in caps.values())
    hooks = (driver.work / "hooks.log").read_text().split("\n")
    assert {h.split()[0] for h in hooks if h} == {"create-symlinks", "enable-cuda-compat", "update-ldcache",
                                                  "disable-device-node-modification"}


def test_deleting_a_pod_unprepares_its_claim(cluster: Cluster, driver: Driver) -> None:
    claim_uid = _claim_uid(cluster, "one-gpu")
    spec = f"k8s.gpu.nvidia.com-claim_{claim_uid}.json"
    assert spec in spec_files()
    cluster.core.delete_namespaced_pod("one-gpu", NS, grace_period_seconds=0)
    eventually(lambda: spec not in spec_files() and claim_uid not in _checkpointed(), timeout=60)


def test_a_killed_driver_restarts_without_losing_a_claim(cluster: Cluster, driver: Driver) -> None:
    before = {name: _claim_uid(cluster, name) for name in ("two-h100", "one-mig", "unchanged")}
    writes = _slice_writes()
    driver.stop(signal.SIGKILL)
    driver.start()
    eventually(driver.healthy, timeout=30)
    assert _slice_writes() == 0 and writes > 0  # the slices were in place: nothing to write
    assert set(before.values()) <= _checkpointed()
    assert all(phase(cluster, name) == "Running" for name in before)
    # The restarted driver unprepares a claim the first one prepared.
    spec = f"k8s.gpu.nvidia.com-claim_{before['unchanged']}.json"
    cluster.core.delete_namespaced_pod("unchanged", NS, grace_period_seconds=0)
    eventually(lambda: spec not in spec_files(), timeout=60)


def test_a_kubelet_restart_registers_and_publishes_again(cluster: Cluster, driver: Driver) -> None:
    generation = slices(cluster)[0]["spec"]["pool"]["generation"]
    registered = driver.log().count("registered with the kubelet")
    subprocess.run([str(K8S / "node"), "restart", str(cluster.dir)], check=True, capture_output=True)
    eventually(lambda: driver.log().count("registered with the kubelet") > registered, timeout=30)
    def republished() -> bool:  # the kubelet deleted them at its start
        found = slices(cluster)
        return len(found) == 2 and all(s["spec"]["pool"]["generation"] > generation for s in found)

    eventually(republished, timeout=30)
    assert len(published(cluster)) == 9
    assert all(phase(cluster, name) == "Running" for name in ("two-h100", "one-mig"))


def test_a_gpu_with_an_xid_is_left_to_claims_that_tolerate_it(cluster: Cluster, driver: Driver) -> None:
    with driver.events.open("a") as f:
        f.write("1 79\n")  # GPU 1 (gpu-1) falls off the bus
    eventually(lambda: bool(published(cluster)["gpu-1"].get("taints")), timeout=30)
    (taint,) = published(cluster)["gpu-1"]["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("gpu.nvidia.com/xid", "79", "NoSchedule")
    uuid = published(cluster)["gpu-1"]["attributes"]["uuid"]["string"]
    that_gpu = f"device.attributes['gpu.nvidia.com'].uuid == '{uuid}'"
    create(cluster, claim_template("sick", "gpu.nvidia.com", 1, that_gpu), pod("sick", "sick"))
    eventually(lambda: _unschedulable(cluster, "sick"), timeout=30)
    assert "taints" in published(cluster)["gpu-1"]  # the scheduler judged it while the taint was there
    create(cluster, claim_template("tolerant", "gpu.nvidia.com", 1, that_gpu, tolerate_xid=True),
           pod("tolerant", "tolerant"))
    running(cluster, "tolerant")
    assert allocated(cluster, "tolerant") == ["gpu-1"]
    # The GPU answers its probes again: after the recovery period the taint goes.
    eventually(lambda: "taints" not in published(cluster)["gpu-1"], timeout=30)


def _unschedulable(cluster: Cluster, name: str) -> bool:
    conditions = cluster.core.read_namespaced_pod(name, NS).status.conditions or []  # type: ignore[union-attr]
    return any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable" for c in conditions)


def _claim_uid(cluster: Cluster, pod_name: str) -> str:
    claims = client.CustomObjectsApi(cluster.api).list_namespaced_custom_object(GROUP, VERSION, NS, "resourceclaims")
    assert isinstance(claims, dict)
    return next(str(c["metadata"]["uid"]) for c in claims["items"]
                if any(o["name"] == pod_name for o in c["metadata"].get("ownerReferences") or []))


def _checkpointed() -> set[str]:
    doc = json.loads((Path(PLUGINS) / "gpu.nvidia.com" / "checkpoint.json").read_text())
    return set(doc["preparedClaims"])


def _slice_writes() -> int:
    answer = http_get(f"{METRICS}/metrics")
    assert answer is not None and answer[0] == 200
    return sum(int(float(line.split()[-1])) for line in answer[1].splitlines()
               if line.startswith("nvidia_dra_plugin_resourceslice_writes_total"))


def test_every_claim_is_unprepared_and_a_stopped_driver_leaves_no_sockets(cluster: Cluster, driver: Driver) -> None:
    cluster.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
    eventually(lambda: not {f for f in spec_files() if f.startswith("k8s.gpu.nvidia.com-claim_")}
               and not _checkpointed(), timeout=60)
    assert driver.stop() == 0
    assert not os.path.exists(f"{REGISTRY}/gpu.nvidia.com-reg.sock")
    assert not os.path.exists(f"{PLUGINS}/gpu.nvidia.com/dra.sock")
