"""The real programs, through the real pynvml, on NVIDIA's own mock NVML (../shared/nvml-mock).

That library was written by NVIDIA, not by us, so it cannot share our simulator's assumptions. The
expected labels are derived here from each shipped profile's own facts with the reference's rules
(shared/reference/gfd-labels.md), not from our code. Known limits of the mock (its README): no MIG
instances, no sysfs (so gpu.mode is `unknown`), every GPU answers the MIG-mode query (mig.capable=true).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.expected import compute, flags, resource, versions
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
