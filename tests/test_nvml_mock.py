"""The real programs, through the real pynvml, on NVIDIA's own mock NVML (../shared/nvml-mock).

That library was written by NVIDIA, not by us, so it cannot share our simulator's assumptions. The
expected labels are derived here from each shipped profile's own facts with the reference's rules
(shared/reference/gfd-labels.md), not from our code. Known limits of the mock (its README): no MIG
instances, no sysfs (so gpu.mode is `unknown`), every GPU answers the MIG-mode query (mig.capable=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gfd.discovery.simulated.driver_root import materialise_driver_root
from gfd.discovery.simulated.profiles import build_node
from tests.dra import KubeletCalls, allocated_claim
from tests.expected import compute, flags, resource, versions
from tests.helpers import eventually
from tests.kubelet import KubeletStandIn
from tests.requirements import require_shared, shared_dir, shared_files

MOCK = shared_dir() / "nvml-mock"
CONFIGS = shared_files("nvml-mock", "configs/mock-nvml-config-*.yaml")
BIN = Path(sys.executable).parent
MIB = 1024 * 1024
# gpu.family by compute capability (reference: family from the CUDA compute capability).
FAMILY = {(7, 5): "turing", (8, 0): "ampere", (8, 9): "ada-lovelace", (9, 0): "hopper", (10, 0): "blackwell"}


@pytest.fixture(autouse=True)
def _mock() -> None:
    require_shared("nvml-mock", "libnvidia-ml.so.1", "configs/mock-nvml-config-*.yaml")


def test_the_mock_and_its_profiles_are_there() -> None:
    assert (MOCK / "libnvidia-ml.so.1").exists()
    assert len(CONFIGS) == 7


@pytest.fixture
def driver_root(tmp_path: Path) -> Path:
    """A driver root as a driver container leaves it: the library under usr/lib64 (a symlink, as there)."""
    lib = tmp_path / "driver-root" / "usr" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libnvidia-ml.so.1").symlink_to(MOCK / "libnvidia-ml.so.1")
    return tmp_path / "driver-root"


def expected(config: dict[str, Any], strategy: str) -> dict[str, str]:
    system, device = config["system"], config["device_defaults"]
    cc = (device["compute_capability"]["major"], device["compute_capability"]["minor"])
    labels = versions(system["driver_version"], system["cuda_version"]) | compute(*cc, FAMILY[cc]) | \
        flags(True, mode="unknown", machine="unknown") | \
        resource("gpu", device["name"].replace(" ", "-"), len(config["devices"]),
                 memory=device["memory"]["total_bytes"] // MIB)
    fabric = device.get("fabric")
    if fabric:
        labels["nvidia.com/gpu.clique"] = f"{fabric['cluster_uuid']}.{fabric.get('clique_id', 0)}"
    if strategy != "none":
        labels["nvidia.com/mig.strategy"] = strategy
    return labels


def gfd(args: list[str], config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gpu-feature-discovery"), "--oneshot", "--output-file=-", "--no-timestamp",
                           "--use-node-feature-api=false", "--machine-type-file=", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ["PATH"], "MOCK_NVML_CONFIG": str(config), **env})


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("strategy", ["none", "single", "mixed"])
def test_gfd_oneshot_on_every_shipped_profile(name: str, strategy: str) -> None:
    config = MOCK / "configs" / name
    proc = gfd([f"--mig-strategy={strategy}"], config, LD_LIBRARY_PATH=str(MOCK))
    assert proc.returncode == 0, proc.stderr
    labels = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert labels == expected(yaml.safe_load(config.read_text()), strategy)


def test_gfd_loads_nvml_from_the_driver_root(driver_root: Path) -> None:
    config = MOCK / "configs" / "mock-nvml-config-h100.yaml"
    proc = gfd([f"--driver-root-ctr-path={driver_root}", "--log-format=json"], config)  # no LD_LIBRARY_PATH
    assert proc.returncode == 0, proc.stderr
    assert dict(line.split("=", 1) for line in proc.stdout.splitlines()) == \
        expected(yaml.safe_load(config.read_text()), "none")
    assert f'"library": "{os.path.realpath(MOCK / "libnvidia-ml.so.1")}"' in proc.stderr


def test_without_a_driver_root_library_the_ordinary_search_is_used(tmp_path: Path) -> None:
    config = MOCK / "configs" / "mock-nvml-config-t4.yaml"
    proc = gfd([f"--driver-root-ctr-path={tmp_path}", "--log-format=json"], config, LD_LIBRARY_PATH=str(MOCK))
    assert proc.returncode == 0, proc.stderr
    assert "ordinary library search" in proc.stderr


def test_gfd_oneshot_exits_1_with_one_line_when_the_mock_loses_a_gpu(tmp_path: Path) -> None:
    config = yaml.safe_load((MOCK / "configs" / "mock-nvml-config-a100.yaml").read_text())
    config["devices"][3]["failure"] = {"mode": "lost"}
    path = tmp_path / "lost.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = gfd([], path, LD_LIBRARY_PATH=str(MOCK))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "GPU 3 (GPU-12345678-1234-1234-1234-123456780003): ERROR_GPU_IS_LOST" in proc.stderr
    assert "Traceback" not in proc.stderr


class PluginOnMock:
    """`nvidia-device-plugin` as a process on the mock, registered with the kubelet stand-in."""

    def __init__(self, tmp_path: Path, driver_root: Path, config: Path) -> None:
        (tmp_path / "device-plugins").mkdir()
        self.kubelet = KubeletStandIn(str(tmp_path / "device-plugins"))
        self.proc = subprocess.Popen(
            [str(BIN / "nvidia-device-plugin"), f"--kubelet-socket={self.kubelet.socket}",
             f"--driver-root-ctr-path={driver_root}", "--health-probe-interval=100ms"],
            env={"PATH": os.environ["PATH"], "MOCK_NVML_CONFIG": str(config)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self.kubelet.stop()
        return err


@pytest.fixture
def plugin_on_mock(tmp_path: Path, driver_root: Path) -> Any:
    started: list[PluginOnMock] = []

    def _start(config: Path) -> PluginOnMock:
        p = PluginOnMock(tmp_path, driver_root, config)
        started.append(p)
        return p

    yield _start
    for p in started:
        assert p.proc.poll() is None, "the plugin exited"
        assert "Traceback" not in p.close()


def _mock_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((MOCK / "configs" / name).read_text())
    return config


@pytest.mark.parametrize("name", CONFIGS)
def test_plugin_registers_lists_and_allocates_on_every_shipped_profile(plugin_on_mock: Any, name: str) -> None:
    config = _mock_config(name)
    p = plugin_on_mock(MOCK / "configs" / name)
    p.kubelet.registered("nvidia.com/gpu", timeout=20)
    uuids = [d["uuid"] for d in config["devices"]]
    assert p.kubelet.health("nvidia.com/gpu") == dict.fromkeys(uuids, "Healthy")
    response = p.kubelet.allocate("nvidia.com/gpu", uuids[1], uuids[0])
    assert response.envs["NVIDIA_VISIBLE_DEVICES"] == f"{uuids[1]},{uuids[0]}"


def test_plugin_on_the_mock_with_a_lost_gpu_and_an_xid(plugin_on_mock: Any, tmp_path: Path) -> None:
    config = _mock_config("mock-nvml-config-a100.yaml")  # its strings survive a YAML round trip (T4's do not)
    config["devices"][2]["failure"] = {"mode": "lost"}
    # Trips on the first guarded (telemetry) call discovery makes, then reports XID 79 once.
    config["devices"][4]["failure"] = {"mode": "ecc_uncorrectable", "after_calls": 1, "xid": {"code": 79}}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))
    p = plugin_on_mock(path)
    p.kubelet.registered("nvidia.com/gpu", timeout=20)
    uuids = [d["uuid"] for d in config["devices"]]
    want = dict.fromkeys(uuids, "Healthy") | {uuids[2]: "Unhealthy", uuids[4]: "Unhealthy"}
    p.kubelet.wait(lambda: p.kubelet.health("nvidia.com/gpu") == want, timeout=10)
    time.sleep(0.5)  # several probe intervals: the lost GPU stays lost, nothing else changes
    assert p.kubelet.health("nvidia.com/gpu")[uuids[2]] == "Unhealthy"


# -- the DRA driver on the mock, against the real API server (issue 23's acceptance) ------------------------------
DRA_NODE, DRA_NS = "gpu-node-1", "dra-mock"
GI = 1024**3


class DraOnMock:
    """`nvidia-dra-plugin` as a process on the mock and the real API server, the kubelet's calls made by a
    stand-in. Its driver root: the mock's NVML, and driver files and device nodes of the mock's driver version
    (the simulator's driver root; the mock ships none)."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], kubeconfig: str) -> None:
        self.dirs = tmp_path
        root = tmp_path / "driver-root"
        materialise_driver_root(build_node({"driver_version": config["system"]["driver_version"]}, "mock"),
                                str(root), {})
        (root / "usr" / "lib64").mkdir(parents=True)
        (root / "usr" / "lib64" / "libnvidia-ml.so.1").symlink_to(MOCK / "libnvidia-ml.so.1")
        for device in config["devices"]:
            (root / "dev" / f"nvidia{device['minor_number']}").write_text("")
        path = tmp_path / "mock.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = tmp_path / "driver.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "nvidia-dra-plugin"), f"--node-name={DRA_NODE}", f"--kubeconfig={kubeconfig}",
                 f"--container-driver-root={root}", f"--cdi-root={tmp_path / 'cdi'}",
                 f"--kubelet-registrar-directory-path={tmp_path / 'registry'}",
                 f"--kubelet-plugins-directory-path={tmp_path / 'plugins'}",
                 "--nvidia-cdi-hook-path=/usr/bin/nvidia-cdi-hook", "--health-probe-interval=100ms",
                 "--log-format=json"],
                env={"PATH": os.environ["PATH"], "MOCK_NVML_CONFIG": str(path)}, stdout=out, stderr=out)

    def close(self) -> str:
        self.proc.terminate()
        self.proc.wait(30)
        return self.log.read_text()


@pytest.fixture(scope="module")
def dra_namespace(dra_api: tuple[Any, str]) -> Any:
    core = client.CoreV1Api(dra_api[0])
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DRA_NS)))
    yield DRA_NS
    core.delete_namespace(DRA_NS)


@pytest.fixture
def dra_on_mock(dra_api: tuple[Any, str], dra_namespace: str, tmp_path: Path) -> Any:
    api, kubeconfig = dra_api
    started: list[DraOnMock] = []

    def _start(config: dict[str, Any]) -> DraOnMock:
        d = DraOnMock(tmp_path, config, kubeconfig)
        started.append(d)
        return d

    yield _start
    for d in started:
        log = d.close()
        assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
    client.CustomObjectsApi(api).delete_collection_cluster_custom_object("resource.k8s.io", "v1", "resourceslices")


def node_slices(api: Any) -> list[dict[str, Any]]:
    answer = client.CustomObjectsApi(api).list_cluster_custom_object(
        "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.nodeName={DRA_NODE}")
    assert isinstance(answer, dict)
    return list(answer["items"])


def nvidias_devices(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What shared/reference/dra.md §3 says NVIDIA's driver publishes on this mock profile, from its own facts:
    a device `gpu-<minor>` per GPU with NVIDIA's attributes, types and values, and its memory."""
    defaults, system = config["device_defaults"], config["system"]
    cc = defaults["compute_capability"]
    return {f"gpu-{d['minor_number']}": {
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": d["uuid"]},
            "productName": {"string": defaults["name"]},
            "brand": {"string": "Nvidia"},
            "architecture": {"string": defaults["architecture"].capitalize()},
            "cudaComputeCapability": {"version": f"{cc['major']}.{cc['minor']}.0"},
            "driverVersion": {"version": "550.163.1"},  # 550.163.01 as semver reads it
            "cudaDriverVersion": {"version": f"{system['cuda_version']}.0"},
            "resource.kubernetes.io/pciBusID": {"string": d["pci"]["bus_id"].lower()}},
        "capacity": {"memory": {"value": f"{defaults['memory']['total_bytes'] // GI}Gi"}}}
        for d in config["devices"]}


@pytest.mark.parametrize("name", ["mock-nvml-config-a100.yaml", "mock-nvml-config-h100.yaml"])
def test_the_dra_driver_publishes_and_prepares_as_nvidias_on_the_mock(dra_on_mock: Any, dra_api: tuple[Any, str],
                                                                     name: str) -> None:
    """8x A100 and 8x H100, as shared/reference/dra.md §3 and §4 describe NVIDIA's driver there: the same
    devices, attributes, values and capacity in the API server, and prepare and unprepare answering the same
    shape (CDI device ids, an error per claim, one spec per claim with the device's node and the common
    edits). Where the node has them, NVIDIA also publishes pcieRoot and numaNode: the mock has no sysfs."""
    api = dra_api[0]
    config = _mock_config(name)
    driver = dra_on_mock(config)

    def published() -> bool:
        found = node_slices(api)
        return len(found) == 1 and len(found[0]["spec"].get("devices", ())) == len(config["devices"])

    eventually(published, timeout=30)
    (pool_slice,) = node_slices(api)
    spec = pool_slice["spec"]
    assert (spec["driver"], spec["nodeName"], spec["pool"]) == (
        "gpu.nvidia.com", DRA_NODE, {"name": DRA_NODE, "generation": 1, "resourceSliceCount": 1})
    assert [(o["kind"], o["name"], o["controller"]) for o in pool_slice["metadata"]["ownerReferences"]] == [
        ("Node", DRA_NODE, True)]
    got = {d["name"]: {"attributes": {k: v for k, v in d["attributes"].items()
                                      if not k.startswith("gfd-py.github.io/")},  # ours, under our own domain
                       "capacity": d["capacity"]} for d in spec["devices"]}
    assert got == nvidias_devices(config)
    assert not any("taints" in d or "consumesCounters" in d for d in spec["devices"])

    kubelet = KubeletCalls(str(driver.dirs / "registry" / "gpu.nvidia.com-reg.sock"))
    try:
        kubelet.register()
        ours = allocated_claim(api, DRA_NS, f"ours-{name[17:21]}", DRA_NODE, "gpu-0")
        elsewhere = allocated_claim(api, DRA_NS, f"elsewhere-{name[17:21]}", "gpu-node-2", "gpu-0")
        answer = kubelet.prepare(ours, elsewhere).claims
        assert answer[ours.uid].error == "" and [
            (list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids))
            for d in answer[ours.uid].devices] == [
            (["gpu"], DRA_NODE, "gpu-0", [f"k8s.gpu.nvidia.com/claim={ours.uid}-gpu-0"])]
        assert not answer[elsewhere.uid].devices and answer[elsewhere.uid].error.startswith(
            f"error preparing devices for claim {DRA_NS}/{elsewhere.name}:{elsewhere.uid}: ")
        cdi = json.loads((driver.dirs / "cdi" / f"k8s.gpu.nvidia.com-claim_{ours.uid}.json").read_text())
        assert cdi["kind"] == "k8s.gpu.nvidia.com/claim"
        assert [(d["name"], [n["path"] for n in d["containerEdits"]["deviceNodes"]]) for d in cdi["devices"]] == [
            (f"{ours.uid}-gpu-0", ["/dev/nvidia0"])]
        edits = cdi["containerEdits"]
        assert "NVIDIA_VISIBLE_DEVICES=void" in edits["env"] and any(
            e.startswith("NVIDIA_CTK_LIBCUDA_DIR=") for e in edits["env"])
        assert sorted(n["path"] for n in edits["deviceNodes"]) == [
            "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"]
        assert [h["args"][1] for h in edits["hooks"]] == ["create-symlinks", "enable-cuda-compat", "update-ldcache",
                                                           "disable-device-node-modification"]
        assert {uid: a.error for uid, a in kubelet.unprepare(ours, elsewhere).claims.items()} == {
            ours.uid: "", elsewhere.uid: ""}  # also for the claim whose prepare failed
        assert os.listdir(driver.dirs / "cdi") == []
    finally:
        kubelet.close()


def test_an_xid_the_mock_raises_taints_its_dra_device(dra_on_mock: Any, dra_api: tuple[Any, str]) -> None:
    """NVIDIA's mock raises XID 79 on GPU 4 (tripped by the first guarded call, then once through the event
    set); the driver publishes NVIDIA's taint for it, and nothing for the others."""
    config = _mock_config("mock-nvml-config-a100.yaml")
    config["devices"][4]["failure"] = {"mode": "ecc_uncorrectable", "after_calls": 1, "xid": {"code": 79}}
    dra_on_mock(config)

    def tainted() -> dict[str, list[dict[str, Any]]]:
        return {d["name"]: d["taints"] for s in node_slices(dra_api[0]) for d in s["spec"].get("devices", ())
                if "taints" in d}

    eventually(lambda: bool(tainted()), timeout=30)
    (name, taints), = tainted().items()
    assert name == f"gpu-{config['devices'][4]['minor_number']}"
    assert [(t["key"], t["value"], t["effect"]) for t in taints] == [("gpu.nvidia.com/xid", "79", "NoSchedule")]
