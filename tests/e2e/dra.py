"""What the DRA driver's end-to-end suites share: the driver as the chart's DRA mode deploys it (its DaemonSet's
container, its ServiceAccount's pod-bound token, its RBAC and admission policy), run by the pod runner on a
simulated node; NVIDIA's DeviceClasses; and the workload side in one namespace: claim templates, pods, and what
the API says of them.

The node is simulated (its NVML and driver files); a driver root like the simulated one stands in for the
host's (the chart's nvidiaDriverRoot), with character devices where the simulation has placeholders, so the
container runtime injects real device nodes. The hook the specs name is a stand-in that records its arguments
(nvidia-ctk is not installable here)."""

from __future__ import annotations

import contextlib
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

import yaml
from kubernetes import client

from gfd.discovery.simulated.driver_root import materialise_driver_root
from gfd.discovery.simulated.profiles import build_node
from gfd.discovery.simulated.sysfs_tree import mig_minors
from tests.e2e.conftest import NODE, Cluster, render
from tests.e2e.podrunner import PodRunner
from tests.helpers import eventually, http_get

GROUP, VERSION = "resource.k8s.io", "v1"
CONTAINER = "nvidia-dra-plugin-ctr"
METRICS = "http://127.0.0.1:9104"  # the chart's dra.metrics.port, on every interface
REGISTRY, PLUGINS, CDI_DIR = "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/run/cdi"
# NVIDIA's chart's DeviceClasses (shared/reference/dra.md §3), as claims written for its driver expect them.
DEVICE_CLASSES: list[dict[str, Any]] = [
    {"metadata": {"name": "gpu.nvidia.com"}, "spec": {"extendedResourceName": "nvidia.com/gpu", "selectors": [{"cel": {
        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}]}},
    {"metadata": {"name": "mig.nvidia.com"}, "spec": {"selectors": [{"cel": {
        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'"}}]}}]
# The driver's nodes as nvidia-modprobe numbers them; the capability and UVM majors are the test's own.
CONTROL = {"nvidiactl": (195, 255), "nvidia-modeset": (195, 254), "nvidia-uvm": (236, 0), "nvidia-uvm-tools": (236, 1)}
CAPS_MAJOR = 237


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


@contextlib.contextmanager
def deployed_driver(cluster: Cluster, profile: dict[str, Any], namespace: str, release: str,
                    values: dict[str, Any] | None = None, extra_env: dict[str, str] | None = None,
                    host_paths: tuple[str, ...] = (), before: tuple[str, ...] = ()) -> Iterator[Driver]:
    """The chart's DRA driver (release `release` in `namespace`, with `values`) on a node simulated from `profile`,
    started (after the init containers named in `before`) and healthy; stopped at the end. `host_paths`: hostPath
    volumes that are this machine's own paths besides the kubelet's and the driver root."""
    work = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))
    events = work / "xids"
    events.write_text("")
    (work / "node.yaml").write_text(yaml.safe_dump({**profile, "events_file": str(events)}))
    host_driver_root = work / "driver-root"
    gpus = sum(g.get("count", 1) for g in profile["gpus"])
    caps = {key: int(minor) for key, _, minor in (line.rpartition(" ") for line in mig_minors(gpus).splitlines())}
    materialise_driver_root(build_node(profile, "e2e"), str(host_driver_root), caps)
    _device_nodes(host_driver_root, caps)
    hook = work / "nvidia-cdi-hook"
    hook.write_text(f"#!/bin/sh\necho \"$@\" >> {work}/hooks.log\n")
    hook.chmod(0o755)
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    objects = render({"dra": {"enabled": True, "deviceClasses": False}, "devicePlugin": {"enabled": False},
                      "nvidiaDriverRoot": str(host_driver_root), "cdi": {"nvidiaHookPath": str(hook)},
                      **(values or {})}, namespace, release)
    cluster.apply([o for o in objects if o["kind"] != "DaemonSet"])
    daemonset = f"{release}-nvidia-device-plugin-dra-kubelet-plugin"
    template = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == daemonset)
    # Bound to the GPU node, so that its token names the node the admission policy lets it write slices of; the
    # kubelet there cannot pull the chart's image, so only the runner runs it.
    runner = PodRunner(cluster.core, template["spec"]["template"], f"{daemonset}-e2e", namespace, NODE,
                       cluster.api_port, cluster.ca_file,
                       real_host_paths=(REGISTRY, PLUGINS, CDI_DIR, str(host_driver_root), *host_paths))
    # The additions to the rendered env: a simulated node; health settled within the test's time.
    extra = {"DRA_SIMULATE": str(work / "node.yaml"), "DRA_HEALTH_RECOVERY_PERIOD": "10s",
             "DRA_HEALTH_PROBE_INTERVAL": "1s", **(extra_env or {})}
    driver = Driver(runner, extra, work, events)
    try:
        for init in before:
            assert runner.run_to_completion(init, extra) == 0, runner.log(init)
        driver.start()
        took = eventually(driver.healthy, timeout=30)
        print(f"registered and published {took:.2f} s after the start")
        yield driver
    finally:
        print(driver.log()[-5000:])
        runner.stop()


@contextlib.contextmanager
def nvidia_device_classes(cluster: Cluster) -> Iterator[None]:
    """NVIDIA's DeviceClasses while a suite runs: the next suites' pods ask nvidia.com/gpu of the device plugin."""
    resource = client.CustomObjectsApi(cluster.api)
    for device_class in DEVICE_CLASSES:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceClass", **device_class}
        resource.create_cluster_custom_object(GROUP, VERSION, "deviceclasses", body)
    try:
        yield
    finally:
        for device_class in DEVICE_CLASSES:
            resource.delete_cluster_custom_object(GROUP, VERSION, "deviceclasses", device_class["metadata"]["name"])


# -- the API's view ---------------------------------------------------------------------------------------------
def slices(cluster: Cluster) -> list[dict[str, Any]]:
    answer = client.CustomObjectsApi(cluster.api).list_cluster_custom_object(
        GROUP, VERSION, "resourceslices", field_selector=f"spec.nodeName={NODE}")
    assert isinstance(answer, dict)
    return list(answer["items"])


def published(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices(cluster) for d in s["spec"].get("devices", ())}


def claim_template(name: str, device_class: str, count: int = 1, cel: str = "", tolerate_xid: bool = False,
                   capacity: dict[str, str] | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount", "count": count}
    if cel:
        exactly["selectors"] = [{"cel": {"expression": cel}}]
    if tolerate_xid:
        exactly["tolerations"] = [{"key": "gpu.nvidia.com/xid", "operator": "Exists", "effect": "NoSchedule"}]
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpus", "exactly": exactly}]}}}}


@dataclass
class Workloads:
    """Pods and claims in one namespace of the cluster."""

    cluster: Cluster
    namespace: str

    def pod(self, name: str, script: str, claim_template_name: str = "",
            limits: dict[str, str] | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "cuda", "image": "docker.io/local/busybox:1",
                                     "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", script]}
        spec: dict[str, Any] = {"hostNetwork": True, "automountServiceAccountToken": False,
                                "terminationGracePeriodSeconds": 0, "restartPolicy": "Never",
                                "containers": [container]}
        if claim_template_name:
            spec["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": claim_template_name}]
            container["resources"] = {"claims": [{"name": "gpus"}]}
        if limits:
            container["resources"] = {"limits": limits}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": self.namespace},
                "spec": spec}

    def create(self, *objects: dict[str, Any]) -> None:
        custom = client.CustomObjectsApi(self.cluster.api)
        for obj in objects:
            if obj["kind"] == "Pod":
                self.cluster.core.create_namespaced_pod(self.namespace, cast(Any, obj))  # a dict is sent as it is
            else:
                custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "resourceclaimtemplates", obj)

    def phase(self, name: str) -> str:
        return str(getattr(self.cluster.core.read_namespaced_pod(name, self.namespace).status, "phase", ""))

    def running(self, *names: str, timeout: float = 60) -> None:
        """Wait for the pods to run. A kubelet can ask for a pod's claim before the API server's Node authorizer
        knows that the pod is bound to it ("no relationship found between node ... and this object"); it would try
        again at its next periodic sync, a minute later, but any update of the pod makes it sync the pod at once:
        a pod that is not running yet gets an annotation every few seconds."""
        for name in names:
            started = nudged = time.monotonic()
            while self.phase(name) != "Running":
                assert time.monotonic() - started < timeout, f"pod {name} not running after {timeout} s"
                time.sleep(0.1)
                if time.monotonic() - nudged > 5:
                    nudged = time.monotonic()
                    self.cluster.core.patch_namespaced_pod(name, self.namespace, {
                        "metadata": {"annotations": {"e2e/nudged": str(nudged)}}})

    def log_when(self, name: str, done: str) -> str:
        """The pod's log once it has printed `done`."""
        log = ""

        def printed() -> bool:
            nonlocal log
            log = self.cluster.core.read_namespaced_pod_log(name, self.namespace)
            return done in log

        eventually(printed, timeout=30)
        return log

    def claims(self) -> list[dict[str, Any]]:
        found = client.CustomObjectsApi(self.cluster.api).list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "resourceclaims")
        assert isinstance(found, dict)
        return list(found["items"])

    def claim_of(self, pod_name: str) -> dict[str, Any]:
        """The pod's claim (from its template, or for its extended resource)."""
        for claim in self.claims():
            owners = claim["metadata"].get("ownerReferences") or []
            if any(o["kind"] == "Pod" and o["name"] == pod_name for o in owners):
                return claim
        raise AssertionError(f"no claim of pod {pod_name}")

    def allocated(self, pod_name: str) -> list[str]:
        """The devices the scheduler allocated to the pod's claim."""
        return [r["device"] for r in self.claim_of(pod_name)["status"]["allocation"]["devices"]["results"]]

    def unschedulable(self, name: str) -> str | None:
        """The scheduler's message while it leaves the pod unscheduled, else None."""
        conditions = self.cluster.core.read_namespaced_pod(name, self.namespace).status.conditions or []  # type: ignore[union-attr]
        return next((str(c.message) for c in conditions
                     if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"), None)

    def delete(self, *names: str) -> None:
        for name in names:
            self.cluster.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)


def spec_files() -> set[str]:
    return set(os.listdir(CDI_DIR))


def checkpointed() -> dict[str, Any]:
    """The driver's prepared claims, by UID, as its checkpoint holds them."""
    claims: dict[str, Any] = json.loads((Path(PLUGINS) / "gpu.nvidia.com" / "checkpoint.json").read_text())[
        "preparedClaims"]
    return claims


def slice_writes() -> int:
    answer = http_get(f"{METRICS}/metrics")
    assert answer is not None and answer[0] == 200
    return sum(int(float(line.split()[-1])) for line in answer[1].splitlines()
               if line.startswith("nvidia_dra_plugin_resourceslice_writes_total"))
