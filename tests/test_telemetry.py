"""GPU telemetry (issue 14): dcgm-exporter's names, types and labels read back with Prometheus' own text
parser, pod attribution through the PodResources API of the kubelet stand-in, the plugin's and the
standalone exporter's processes, and NVIDIA's mock NVML for every profile it ships."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gfd.config import ConfigError
from gfd.discovery.simulated.telemetry import Pattern, parse_telemetry
from gfd.discovery.telemetry import FIELDS
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config
from tests.helpers import eventually, free_port, http_get
from tests.kubelet import KubeletStandIn
from tests.requirements import require_shared, shared_dir, shared_files

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MOCK = shared_dir() / "nvml-mock"
TYPES = {f.name: f.kind for f in FIELDS} | {"DCGM_FI_DEV_XID_ERRORS": "gauge", "gpu_metrics_gpu_up": "gauge"}
GPU_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
              "container", "namespace", "pod"}
MIG_LABELS = GPU_LABELS | {"GPU_I_PROFILE", "GPU_I_ID"}


class Scrape:
    """One /metrics answer, read by prometheus_client's parser: declared types and every sample."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: list[Any] = []
        for family in text_string_to_metric_families(text):
            if family.type != "unknown":
                self.types[family.name] = family.type
            self.samples += family.samples

    def series(self, name: str, **labels: str) -> list[Any]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        (sample,) = self.series(name, **labels)
        return float(sample.value)


def scrape(port: int) -> Scrape:
    answer = http_get(f"http://127.0.0.1:{port}/metrics")
    assert answer is not None and answer[0] == 200
    return Scrape(answer[1])


def check_names_types_and_labels(s: Scrape) -> None:
    """Every sample is a documented metric under its documented type, with dcgm-exporter's labels."""
    assert s.samples
    for sample in s.samples:
        assert sample.name in TYPES, sample.name
        assert s.types[sample.name] == TYPES[sample.name]  # counters too: dcgm-exporter's names, no _total
        if sample.name != "gpu_metrics_gpu_up":
            assert set(sample.labels) == (MIG_LABELS if "GPU_I_ID" in sample.labels else GPU_LABELS)


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Callable[..., tuple[DevicePlugin, KubeletStandIn, int]]]:
    started: list[tuple[DevicePlugin, threading.Thread, KubeletStandIn]] = []

    def _start(*args: str) -> tuple[DevicePlugin, KubeletStandIn, int]:
        # Short: a socket path must fit a unix socket address (tmp_path's names can be long).
        plugin_dir = Path(tempfile.mkdtemp(prefix="k-", dir="/tmp")) / "device-plugins"
        plugin_dir.mkdir()
        kubelet = KubeletStandIn(str(plugin_dir))
        port = free_port()
        argv = [f"--kubelet-socket={kubelet.socket}", f"--gpu-metrics-address=127.0.0.1:{port}",
                f"--pod-resources-socket={kubelet.pod_resources_socket}", "--collect-interval=50ms",
                "--health-probe-interval=50ms", "--log-format=json", *args]
        p = DevicePlugin(argv, {"NODE_NAME": "gpu-node-1"}, load_plugin_config(argv, {}))
        thread = threading.Thread(target=p.run, daemon=True)
        thread.start()
        started.append((p, thread, kubelet))
        eventually(lambda: (http_get(f"http://127.0.0.1:{port}/healthz") or (0, ""))[0] == 200, timeout=15)
        return p, kubelet, port

    yield _start
    for p, thread, kubelet in started:
        p.stop()
        thread.join(10)
        kubelet.stop()
        shutil.rmtree(os.path.dirname(kubelet.directory), ignore_errors=True)


def profile(tmp_path: Path, **doc: Any) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"model": "A100-SXM4-40GB", "count": 2}], **doc}))
    return str(path)


# -- names, units, labels; values from the profile ------------------------------------------------------------
def test_every_metric_under_dcgm_exporters_name_type_and_labels(plugin: Any, tmp_path: Path) -> None:
    node = profile(tmp_path, telemetry={"gpu_util": 42, "mem_util": 17, "fb_used_mib": 1000, "power_w": 250,
                                        "gpu_temp": 61, "memory_temp": 70, "sm_clock": 1410, "mem_clock": 1215,
                                        "pcie_replay": 3, "ecc_sbe": 5})
    p, _kubelet, port = plugin(f"--simulate={node}")
    s = scrape(port)
    check_names_types_and_labels(s)
    uuid = p.model.gpus[0].uuid if p.model else ""
    assert s.value("DCGM_FI_DEV_GPU_UTIL", UUID=uuid) == 42 and s.value("DCGM_FI_DEV_MEM_COPY_UTIL", UUID=uuid) == 17
    assert s.value("DCGM_FI_DEV_FB_USED", UUID=uuid) == 1000
    assert s.value("DCGM_FI_DEV_FB_FREE", UUID=uuid) == 40960 - 1000  # A100 40GB: 40960 MiB (models/)
    assert s.value("DCGM_FI_DEV_POWER_USAGE", UUID=uuid) == 250  # W, from NVML's mW
    assert s.value("DCGM_FI_DEV_GPU_TEMP", UUID=uuid) == 61 and s.value("DCGM_FI_DEV_MEMORY_TEMP", UUID=uuid) == 70
    assert s.value("DCGM_FI_DEV_SM_CLOCK", UUID=uuid) == 1410 and s.value("DCGM_FI_DEV_MEM_CLOCK", UUID=uuid) == 1215
    assert s.value("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", UUID=uuid) == 3
    assert s.value("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", UUID=uuid) == 5
    assert s.value("DCGM_FI_DEV_XID_ERRORS", UUID=uuid) == 0
    (sample,) = s.series("DCGM_FI_DEV_GPU_UTIL", UUID=uuid)
    assert sample.labels | {"UUID": ""} == {
        "gpu": "0", "UUID": "", "pci_bus_id": p.model.gpus[0].pci_bus_id if p.model else "", "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-40GB", "Hostname": "gpu-node-1", "DCGM_FI_DRIVER_VERSION": "550.54.15",
        "container": "", "namespace": "", "pod": ""}
    # Energy is a counter: it only grows while power is drawn.
    first = s.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=uuid)
    eventually(lambda: scrape(port).value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=uuid) > first)


def test_an_unsupported_query_is_left_out_for_that_gpu_and_logged_once(plugin: Any, tmp_path: Path) -> None:
    node = profile(tmp_path, faults=[{"call": "nvmlDeviceGetFieldValues", "error": "NOT_SUPPORTED", "gpu": 1}])
    with structlog.testing.capture_logs() as logged:
        p, _kubelet, port = plugin(f"--simulate={node}")
        assert p.model is not None
        first, second = (g.uuid for g in p.model.gpus)
        s = scrape(port)
        assert s.series("DCGM_FI_DEV_MEMORY_TEMP", UUID=first)
        assert not s.series("DCGM_FI_DEV_MEMORY_TEMP", UUID=second)
        assert s.series("DCGM_FI_DEV_GPU_TEMP", UUID=second)  # the rest of that GPU's metrics stay
        eventually(lambda: p.telemetry is not None and p.telemetry.collections >= 3)
    unsupported = [e for e in logged if e["event"] == "metric not supported by this device; left out"]
    seen = [(e["device"], e["metric"]) for e in unsupported]
    assert len(seen) == len(set(seen))  # once each, over three collections
    assert [device for device, metric in seen if metric == "DCGM_FI_DEV_MEMORY_TEMP"] == [second]


def test_mig_devices_report_their_memory_with_instance_labels(plugin: Any) -> None:
    p, _kubelet, port = plugin("--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed")
    s = scrape(port)
    check_names_types_and_labels(s)
    assert p.model is not None
    for mig in p.model.mig_devices:
        (used,) = s.series("DCGM_FI_DEV_FB_TOTAL", GPU_I_ID=str(mig.gi_id), GPU_I_PROFILE=mig.label_profile,
                           UUID=next(g.uuid for g in p.model.gpus if mig in g.mig_devices))
        assert used.value == mig.memory_mib


# -- pods -----------------------------------------------------------------------------------------------------
def test_series_carry_the_pods_that_hold_each_device_and_drop_them_when_they_go(plugin: Any, write_yaml: Any,
                                                                                 tmp_path: Path) -> None:
    cfg = write_yaml({"version": "v1", "sharing": {"timeSlicing": {"resources": [
        {"name": "nvidia.com/gpu", "replicas": 2}]}}})
    p, kubelet, port = plugin(f"--simulate={profile(tmp_path)}", f"--config-file={cfg}")
    replicas = sorted(d.ID for d in kubelet.registered("nvidia.com/gpu").devices)
    gpu0 = replicas[0].split("::")[0]
    both = [r for r in replicas if r.startswith(gpu0)]
    kubelet.run_pod("ml", "trainer-0", "main", "nvidia.com/gpu", both[0])
    kubelet.run_pod("ml", "trainer-1", "main", "nvidia.com/gpu", both[1])

    def holders() -> set[tuple[str, str, str]]:
        return {(x.labels["namespace"], x.labels["pod"], x.labels["container"])
                for x in scrape(port).series("DCGM_FI_DEV_GPU_UTIL", UUID=gpu0)}

    eventually(lambda: holders() == {("ml", "trainer-0", "main"), ("ml", "trainer-1", "main")})
    other = next(g.uuid for g in (p.model.gpus if p.model else ()) if g.uuid != gpu0)
    assert {x.labels["pod"] for x in scrape(port).series("DCGM_FI_DEV_GPU_UTIL", UUID=other)} == {""}
    kubelet.delete_pod("ml", "trainer-0")
    eventually(lambda: holders() == {("ml", "trainer-1", "main")})
    kubelet.delete_pod("ml", "trainer-1")
    eventually(lambda: holders() == {("", "", "")})


def test_no_pod_resources_socket_still_serves_every_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "gpu-metrics-exporter"), "--simulate=t4", f"--address=127.0.0.1:{port}",
                             f"--pod-resources-socket={tmp_path / 'none.sock'}", "--collect-interval=100ms",
                             "--log-format=json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        eventually(lambda: (http_get(f"http://127.0.0.1:{port}/healthz") or (0, ""))[0] == 200, timeout=15)
        s = scrape(port)
        check_names_types_and_labels(s)
        assert len(s.series("DCGM_FI_DEV_GPU_TEMP", pod="")) == 4
        assert not s.series("DCGM_FI_DEV_XID_ERRORS")  # no health stream in the standalone exporter
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.count("no pod attribution") == 1


# -- faults: XIDs, lost GPUs --------------------------------------------------------------------------------------
def test_the_last_xid_and_a_lost_gpu(plugin: Any, tmp_path: Path) -> None:
    p, _kubelet, port = plugin(f"--simulate={profile(tmp_path)}")
    assert p.current is not None and p.current.source.simulation is not None and p.model is not None
    sim = p.current.source.simulation
    first, second = (g.uuid for g in p.model.gpus)
    sim.library.inject_xid(0, 43)
    eventually(lambda: scrape(port).value("DCGM_FI_DEV_XID_ERRORS", UUID=first) == 43)
    assert scrape(port).value("DCGM_FI_DEV_XID_ERRORS", UUID=second) == 0
    sim.node.gpus[1].lost = True
    eventually(lambda: scrape(port).value("gpu_metrics_gpu_up", UUID=second) == 0)
    s = scrape(port)
    assert not s.series("DCGM_FI_DEV_GPU_TEMP", UUID=second) and s.value("gpu_metrics_gpu_up", UUID=first) == 1


# -- simulated patterns --------------------------------------------------------------------------------------------
def test_patterns_follow_their_shape() -> None:
    sine = Pattern("sine", {"min": 10, "max": 90, "period_s": 60})
    assert sine.at(0, 0) == 50 and sine.at(15, 0) == 90 and math.isclose(sine.at(45, 0), 10)
    assert Pattern("ramp", {"from": 0, "to": 100, "period_s": 10}).at(5, 0) == 50
    steps = Pattern("steps", {"values": [1, 2, 3], "every_s": 2})
    assert [steps.at(t, 0) for t in (0, 2, 4, 6)] == [1, 2, 3, 1]
    assert sine.at(0, 0.25) == 90  # GPU i is shifted by i/count of a period


@pytest.mark.parametrize(("raw", "says"), [
    ({"gpu_utl": 5}, "telemetry.'gpu_utl': unknown reading"),
    ({"gpu_util": {"sine": {"min": 1}}}, "expected the keys"),
    ({"gpu_util": {"ramp": {"from": 0, "to": 1, "period_s": 0}}}, "the period must be positive"),
    ({"gpu_util": "hot"}, "not a number or a pattern"),
])
def test_bad_telemetry_in_a_profile_is_one_line(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_telemetry(raw, "simulation profile x.yaml")
    assert says in str(e.value) and "\n" not in str(e.value)


# -- NVIDIA's mock NVML -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", shared_files("nvml-mock", "configs/mock-nvml-config-*.yaml"))
def test_on_nvidias_mock_the_readings_are_the_profiles(tmp_path: Path, config: str) -> None:
    require_shared("nvml-mock", "libnvidia-ml.so.1", f"configs/{config}")
    lib = tmp_path / "driver-root" / "usr" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libnvidia-ml.so.1").symlink_to(MOCK / "libnvidia-ml.so.1")
    doc = yaml.safe_load((MOCK / "configs" / config).read_text())
    device = doc.get("device_defaults") or doc.get("device") or {}
    port = free_port()
    proc = subprocess.Popen([str(BIN / "gpu-metrics-exporter"), f"--address=127.0.0.1:{port}",
                             f"--driver-root-ctr-path={tmp_path / 'driver-root'}", "--collect-interval=200ms",
                             f"--pod-resources-socket={tmp_path / 'none.sock'}", "--log-format=json"],
                            env={"PATH": os.environ["PATH"], "MOCK_NVML_CONFIG": str(MOCK / "configs" / config)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: (http_get(f"http://127.0.0.1:{port}/healthz") or (0, ""))[0] == 200, timeout=20)
        s = scrape(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    check_names_types_and_labels(s)
    temps = s.series("DCGM_FI_DEV_GPU_TEMP")
    assert temps and len(temps) == len(s.series("gpu_metrics_gpu_up"))
    thermal, power, clocks = device.get("thermal", {}), device.get("power", {}), device.get("clocks", {})
    if "temperature_gpu_c" in thermal:
        assert {t.value for t in temps} == {thermal["temperature_gpu_c"]}
    if "current_draw_mw" in power:
        assert {x.value for x in s.series("DCGM_FI_DEV_POWER_USAGE")} == {power["current_draw_mw"] / 1000}
    if "sm_current" in clocks:
        assert {x.value for x in s.series("DCGM_FI_DEV_SM_CLOCK")} == {clocks["sm_current"]}
    if "memory_current" in clocks:
        assert {x.value for x in s.series("DCGM_FI_DEV_MEM_CLOCK")} == {clocks["memory_current"]}


def test_the_readme_documents_the_mapping() -> None:
    rows = {line.split("|")[1].strip(" `"): [c.strip(" `") for c in line.split("|")[2:5]]
            for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `DCGM_FI_")}
    for f in FIELDS:
        assert rows[f.name] == [f.kind, f.unit, f.call], f.name


def test_nvlink_bandwidth_where_the_gpu_has_links(plugin: Any, tmp_path: Path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"gpus": [{"model": "A100-SXM4-40GB", "count": 3}],
                                    "topology": {"nvlink": [[0, 1, 4]]}, "telemetry": {"nvlink_kib_per_s": 1000}}))
    p, _kubelet, port = plugin(f"--simulate={node}")
    assert p.model is not None
    linked, _other, alone = (g.uuid for g in p.model.gpus)
    s = scrape(port)
    assert s.types["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] == "counter"
    assert not s.series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=alone)  # no links: NOT_SUPPORTED, left out
    first = s.value("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=linked)
    eventually(lambda: scrape(port).value("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=linked) > first)
