"""GPU telemetry (issues 14, 21): dcgm-exporter's names, types, HELP and labels read back strictly with
Prometheus' own text parser, values against the simulator's profiles (NVML, GPM, NVLink, vGPU), pod
attribution through the PodResources API of the kubelet stand-in, XIDs in the plugin and the standalone
exporter, and NVIDIA's mock NVML for every profile it ships. A real Prometheus and promtool read it in
test_telemetry_prometheus.py."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import yaml

from gfd import signals
from gfd.config import ConfigError
from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.profiles import build_node
from gfd.discovery.simulated.telemetry import Pattern, parse_telemetry
from gfd.discovery.telemetry import FIELDS
from gfd.lifecycle import Lifecycle
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config
from plugin.telemetry import cli as exporter
from plugin.telemetry.collector import TelemetryCollector
from tests.helpers import eventually, free_port, http_get
from tests.kubelet import KubeletStandIn
from tests.requirements import require_shared, shared_dir, shared_files
from tests.scrape import Scrape, scrape

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MOCK = shared_dir() / "nvml-mock"
# dcgm-exporter's own declaration of each metric we export: (type, HELP), transcribed from its default counters
# (etc/default-counters.csv at NVIDIA/dcgm-exporter 7ad5832; the volatile ECC totals are rows it ships commented
# out; FB_TOTAL is in none of its files and takes the wording of its FB_FREE/FB_USED rows) -- written from the
# reference, not from our table.
DCGM_EXPORTER = {
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "SM clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", "Memory clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEMORY_TEMP": ("gauge", "Memory temperature (in C)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("counter", "Total number of PCIe retries."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", "Memory utilization (in %)."),
    "DCGM_FI_DEV_ENC_UTIL": ("gauge", "Encoder utilization (in %)."),
    "DCGM_FI_DEV_DEC_UTIL": ("gauge", "Decoder utilization (in %)."),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "Value of the last XID error encountered."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_TOTAL": ("gauge", "Framebuffer memory total (in MiB)."),
    "DCGM_FI_DEV_FB_RESERVED": ("gauge", "Framebuffer memory reserved (in MiB)."),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("counter", "Total number of single-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("counter", "Total number of double-bit volatile ECC errors."),
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": ("gauge", "Total number of NVLink bandwidth counters for all lanes."),
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": ("gauge", "vGPU License status"),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("counter", "Number of remapped rows for uncorrectable errors"),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("counter", "Number of remapped rows for correctable errors"),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", "Whether remapping of rows has failed"),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gauge", "Ratio of time the graphics engine is active."),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("gauge", "Ratio of cycles the tensor (HMMA) pipe is active."),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("gauge", "Ratio of cycles the device memory interface is active sending or "
                                          "receiving data."),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("gauge", "The rate of data transmitted over the PCIe bus - including both "
                                            "protocol headers and data payloads - in bytes per second."),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("gauge", "The rate of data received over the PCIe bus - including both "
                                            "protocol headers and data payloads - in bytes per second."),
}
OURS = {"gpu_metrics_gpu_up", "gpu_metrics_device_holders"}
GPU_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
              "container", "namespace", "pod"}
MIG_LABELS = GPU_LABELS | {"GPU_I_PROFILE", "GPU_I_ID"}
XID_LABELS = GPU_LABELS | {"err_code", "err_msg"}


def check_names_types_and_labels(s: Scrape) -> None:
    """Every family is dcgm-exporter's under its type and HELP (or one of ours), with dcgm-exporter's labels."""
    assert s.samples
    for name, kind in s.types.items():
        assert name in OURS or (kind, s.helps[name]) == DCGM_EXPORTER[name], name
    for sample in s.samples:
        if sample.name in OURS:
            continue
        expected = XID_LABELS if sample.name == "DCGM_FI_DEV_XID_ERRORS" else \
            MIG_LABELS if "GPU_I_ID" in sample.labels else GPU_LABELS
        assert set(sample.labels) == expected, sample


def test_our_table_is_dcgm_exporters() -> None:
    assert {f.name: (f.kind, f.help) for f in FIELDS} == {k: v for k, v in DCGM_EXPORTER.items()
                                                          if k != "DCGM_FI_DEV_XID_ERRORS"}


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
    # A100 40GB: 40960 MiB, 583 MiB of it reserved (models/); free is what neither holds (nvmlMemory_v2_t)
    assert s.value("DCGM_FI_DEV_FB_RESERVED", UUID=uuid) == 583
    assert s.value("DCGM_FI_DEV_FB_FREE", UUID=uuid) == 40960 - 583 - 1000
    assert s.value("DCGM_FI_DEV_POWER_USAGE", UUID=uuid) == 250  # W, from NVML's mW
    assert s.value("DCGM_FI_DEV_GPU_TEMP", UUID=uuid) == 61 and s.value("DCGM_FI_DEV_MEMORY_TEMP", UUID=uuid) == 70
    assert s.value("DCGM_FI_DEV_SM_CLOCK", UUID=uuid) == 1410 and s.value("DCGM_FI_DEV_MEM_CLOCK", UUID=uuid) == 1215
    assert s.value("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", UUID=uuid) == 3
    assert s.value("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", UUID=uuid) == 5
    (xid,) = s.series("DCGM_FI_DEV_XID_ERRORS", UUID=uuid)
    assert xid.value == 0 and (xid.labels["err_code"], xid.labels["err_msg"]) == ("0", "No Error")
    (sample,) = s.series("DCGM_FI_DEV_GPU_UTIL", UUID=uuid)
    assert sample.labels | {"UUID": ""} == {
        "gpu": "0", "UUID": "", "pci_bus_id": p.model.gpus[0].pci_bus_id if p.model else "", "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-40GB", "Hostname": "gpu-node-1", "DCGM_FI_DRIVER_VERSION": "550.54.15",
        "container": "", "namespace": "", "pod": ""}
    # Energy is a counter: it only grows while power is drawn.
    first = s.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=uuid)
    eventually(lambda: scrape(port).value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=uuid) > first)


def test_an_unsupported_query_is_left_out_for_that_gpu_and_logged_once_per_device(plugin: Any,
                                                                                  tmp_path: Path) -> None:
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
    unsupported = {e["device"]: e["metrics"].split(",") for e in logged
                   if e["event"] == "metrics not supported by this device; left out"}
    lines = [e for e in logged if e["event"] == "metrics not supported by this device; left out"]
    assert len(lines) == len(unsupported) == 2  # one line per device, over three collections
    assert "DCGM_FI_DEV_MEMORY_TEMP" in unsupported[second] and "DCGM_FI_DEV_MEMORY_TEMP" not in unsupported[first]
    # An A100 without NVLink, no vGPU, no GPM: what it cannot answer, said once.
    assert {"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE"} <= set(unsupported[first])


def test_a_failing_query_leaves_its_metrics_out_and_says_so_once(tmp_path: Path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"gpus": [{"model": "T4", "count": 2}], "faults": [
        {"call": "nvmlDeviceGetMemoryInfo_v2", "error": "UNKNOWN", "gpu": 1}]}))
    with collector_on(node) as (collector, source), structlog.testing.capture_logs() as logged:
        s = collected(collector, 3)
        first, second = (g.uuid for g in source.read().gpus)
    assert s.series("DCGM_FI_DEV_FB_USED", UUID=first) and not s.series("DCGM_FI_DEV_FB_USED", UUID=second)
    assert s.series("DCGM_FI_DEV_GPU_TEMP", UUID=second)
    assert [(e["device"], e["metrics"], e["error"]) for e in logged if e["event"] == "metric query failed; left out"] \
        == [(second, "DCGM_FI_DEV_FB_FREE,DCGM_FI_DEV_FB_RESERVED,DCGM_FI_DEV_FB_TOTAL,DCGM_FI_DEV_FB_USED",
             "ERROR_UNKNOWN")]


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
        assert len(s.series("DCGM_FI_DEV_XID_ERRORS", err_code="0", err_msg="No Error")) == 4  # NVML events
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
    (xid,) = scrape(port).series("DCGM_FI_DEV_XID_ERRORS", UUID=first)
    assert (xid.labels["err_code"], xid.labels["err_msg"]) == ("43", "GPU stopped processing")  # XID catalog
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


@pytest.mark.parametrize(("topology", "says"), [
    ({"nvswitch": {"switches": ["00000000:01:00.0"]}}, "1 switches, 0 links per GPU"),
    ({"nvswitch": {"switches": ["00000000:01:00.0"], "links_per_gpu": 19}}, "19 links per GPU"),
    ({"nvswitch": {"switches": ["../../x"], "links_per_gpu": 2}}, "not a PCI address"),
    ({"nvlink": [[0, 1, 10]], "nvswitch": {"switches": ["00000000:01:00.0"], "links_per_gpu": 12}},
     "22 NVLinks on GPU 0"),
])
def test_a_bad_simulated_nvlink_topology_is_one_line(topology: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_node({"gpus": [{"model": "A100-SXM4-40GB", "count": 2}], "topology": topology}, "x.yaml")
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
        eventually(lambda: bool(scrape(port).series("DCGM_FI_PROF_PCIE_TX_BYTES")), timeout=10)  # GPM: 2 collections
        s = scrape(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    check_names_types_and_labels(s)
    # NVIDIA's mock implements GPM on Hopper and later, as NVML does: the profiling ratios exactly there.
    hopper = device["compute_capability"]["major"] >= 9
    assert ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in s.types) == hopper
    if "reserved_bytes" in device.get("memory", {}):
        assert {x.value for x in s.series("DCGM_FI_DEV_FB_RESERVED")} == {device["memory"]["reserved_bytes"] / 2**20}
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
        assert rows[f.name] == [f.kind, f.help, f.call], f.name


# -- rates between collections: NVLink, profiling (GPM on Hopper, PCIe counters before it) ----------------------
def test_nvlink_bandwidth_is_a_rate_where_the_gpu_has_links(plugin: Any, tmp_path: Path) -> None:
    """DCGM's NVLINK_BANDWIDTH_TOTAL: MiB/s both ways over the interval, from NVML's KiB data counters."""
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"gpus": [{"model": "A100-SXM4-40GB", "count": 3}],
                                    "topology": {"nvlink": [[0, 1, 4]]}, "telemetry": {"nvlink_kib_per_s": 1024}}))
    p, _kubelet, port = plugin(f"--simulate={node}")
    assert p.model is not None
    linked, _other, alone = (g.uuid for g in p.model.gpus)
    eventually(lambda: bool(scrape(port).series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=linked)))
    s = scrape(port)
    assert s.types["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] == "gauge"
    assert not s.series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=alone)  # no links: NOT_SUPPORTED, left out
    assert s.value("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", UUID=linked) == pytest.approx(2.0, rel=0.05)  # 1 MiB/s a way


@contextlib.contextmanager
def collector_on(profile: str | Path) -> Iterator[tuple[TelemetryCollector, NodeSource]]:
    """The standalone exporter's collector on a simulated node, in this process (its NVML is ours to poke)."""
    with NodeSource("nvml", str(profile)) as source:
        source.open()
        model = source.read()
        yield TelemetryCollector(lambda: model, 10, "/nonexistent/kubelet.sock", "node-1"), source


def collected(collector: TelemetryCollector, times: int = 2) -> Scrape:
    for n in range(times):
        if n:
            time.sleep(0.05)  # a rate needs time between two samples
        collector.collect_once()
    return Scrape(collector.exposition.decode())


@pytest.mark.parametrize(("profile", "gpm"), [("dgx-h100", True), ("dgx-a100", False)])
def test_profiling_from_gpm_on_hopper_and_pcie_counters_before(tmp_path: Path, profile: str, gpm: bool) -> None:
    node = tmp_path / "node.yaml"
    doc = yaml.safe_load((ROOT / "gfd" / "discovery" / "simulated" / "profiles" / f"{profile}.yaml").read_text())
    doc["telemetry"] = {"gr_engine_active": 40, "tensor_active": 25, "dram_active": 10, "pcie_tx_kib_per_s": 2048,
                        "pcie_rx_kib_per_s": 512, "nvlink_kib_per_s": 51200}
    node.write_text(yaml.safe_dump(doc))
    with collector_on(node) as (collector, _source):
        first = collected(collector, 1)
        s = collected(collector)
    check_names_types_and_labels(s)
    assert len(s.series("DCGM_FI_PROF_PCIE_TX_BYTES")) == 8
    # DCGM's units: bytes/s (NVML: KB/s, or GPM's MiB/s) and ratios (GPM: %).
    assert {x.value for x in s.series("DCGM_FI_PROF_PCIE_TX_BYTES")} == {2048 * 1024}
    assert {x.value for x in s.series("DCGM_FI_PROF_PCIE_RX_BYTES")} == {512 * 1024}
    if gpm:
        assert not first.series("DCGM_FI_PROF_GR_ENGINE_ACTIVE")  # a window needs two samples
        assert {x.value for x in s.series("DCGM_FI_PROF_GR_ENGINE_ACTIVE")} == {0.4}
        assert {x.value for x in s.series("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")} == {0.25}
        assert {x.value for x in s.series("DCGM_FI_PROF_DRAM_ACTIVE")} == {0.1}
    else:  # no GPM before Hopper, and NVML has no other source for these three
        assert not {"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
                    "DCGM_FI_PROF_DRAM_ACTIVE"} & set(s.types)
    # Both DGX boards are NVLink machines (through NVSwitches): 50 MiB/s each way.
    assert [x.value for x in s.series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL")] == pytest.approx([100] * 8, rel=0.03)


def test_profiling_carries_on_across_a_plugin_restart(plugin: Any, tmp_path: Path) -> None:
    """A restart opens a new NVML session while the collector keeps its GPM buffers: the new session refuses
    them, they are dropped, and the next window is measured on new ones (no crash, no stale value kept)."""
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"gpus": [{"model": "H100-80GB-HBM3", "count": 2}],
                                    "telemetry": {"tensor_active": 50}}))
    p, _kubelet, port = plugin(f"--simulate={node}")
    eventually(lambda: len(scrape(port).series("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")) == 2)
    before = p.current
    with structlog.testing.capture_logs() as logged:
        p.request_reload()
        eventually(lambda: p.current is not None and p.current is not before, timeout=15)
        assert p.telemetry is not None
        restarted = p.telemetry.collections
        eventually(lambda: p.telemetry is not None and p.telemetry.collections >= restarted + 4)
        assert {x.value for x in scrape(port).series("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")} == {0.5}
    assert not [e for e in logged if e["event"] == "telemetry collection failed"]


@pytest.mark.parametrize("licensed", [True, False])
def test_a_vgpu_guest_reports_its_license_and_bare_metal_none(tmp_path: Path, licensed: bool) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({"gpus": [{"model": "T4", "virtualization_mode": 2, "vgpu_licensed": licensed},
                                             {"model": "T4"}]}))
    with collector_on(node) as (collector, source):
        s = collected(collector, 1)
        guest, metal = (g.uuid for g in source.read().gpus)
    assert s.value("DCGM_FI_DEV_VGPU_LICENSE_STATUS", UUID=guest) == float(licensed)
    assert not s.series("DCGM_FI_DEV_VGPU_LICENSE_STATUS", UUID=metal)


def test_the_standalone_collector_takes_xids_from_nvml_events() -> None:
    with collector_on("dgx-a100") as (collector, source):
        uuids = [g.uuid for g in source.read().gpus]
        assert source.simulation is not None
        source.simulation.library.inject_xid(2, 79)
        source.simulation.library.inject_xid(2, 94)  # the last one counts
        s = collected(collector, 1)
    (xid,) = s.series("DCGM_FI_DEV_XID_ERRORS", UUID=uuids[2])
    assert xid.value == 94 and (xid.labels["err_code"], xid.labels["err_msg"]) == ("94", "Contained ECC error")
    assert {x.value for x in s.series("DCGM_FI_DEV_XID_ERRORS") if x.labels["UUID"] != uuids[2]} == {0}
    assert s.value("DCGM_FI_DEV_XID_ERRORS", UUID=uuids[0]) == 0


def test_the_exporter_installs_its_signal_handling_before_it_starts_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 22: the exporter wired its signals after opening NVML and starting its HTTP server's
    thread; a SIGTERM meanwhile met the default action (killed, no orderly stop). As every program: first."""
    at_install: list[list[str]] = []

    def install(life: Lifecycle, reload: Callable[[], None] | None = None) -> None:
        at_install.append(life.alive())
        life.stop("test")  # and stop at once: the program must still go through its start and end cleanly

    monkeypatch.setattr(signals, "install", install)
    assert exporter.main([f"--address=127.0.0.1:{free_port()}", "--simulate=t4"], {}) == 0
    assert at_install == [[]]
