"""Who uses what on a shared GPU (issue 24, item 5): the shares in the DRA driver's checkpoint (written by its own
Checkpoint class, limits from the claim's consumedCapacity), the pods and containers the kubelet lists for them
(the PodResources stand-in serves the kubelet's API), and real processes: children of the test in real pod cgroups
(root), or with their cgroup file under a proc root of the test's; NVML lists their PIDs through the real pynvml
call path, on our simulator and on NVIDIA's mock NVML."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.install import Simulation
from gfd.discovery.simulated.profiles import SimProcess
from gfd.discovery.telemetry import GpuProcess
from gfd.model import DeviceModel
from plugin.dra.checkpoint import PREPARE_COMPLETED, Checkpoint, PreparedClaim, PreparedDevice
from plugin.dra.claims import AllocationResult, ClaimRef, PodRef
from plugin.dra.devices import Allocatable, allocatable_devices
from plugin.dra.shares import Share, ShareLimits, share_limits
from plugin.dra.sharing import MPS, ConsumableShares
from plugin.telemetry.cgroups import CgroupOwner
from plugin.telemetry.collector import MAX_PROCESSES, TelemetryCollector
from plugin.telemetry.podresources import Holder
from plugin.telemetry.shares import DeviceShares, ShareUse, share_uses
from plugin.telemetry.snapshot import MAX_HOLDERS
from tests.cgroups import CGROUPFS, SYSTEMD, PodProcesses, fake_proc, writable_hierarchy
from tests.helpers import eventually, free_port, http_get, kill_all
from tests.kubelet import KubeletStandIn
from tests.requirements import missing, require_shared
from tests.scrape import Scrape, scrape

NODE = "node-1"
BIN = Path(sys.executable).parent
GIB = 1024
SHARED = {"description": "two A100 80GB", "machine": "test", "gpus": [{"model": "A100-SXM4-80GB", "count": 2}]}


def share(claim: str, pods: tuple[PodRef, ...], uuid: str = "GPU-a", mib: int = 10 * GIB, device: str = "gpu-0",
          share_id: str = "") -> Share:
    return Share(ClaimRef("ml", claim, f"uid-{claim}"), pods, device, share_id or f"id-{claim}",
                 ShareLimits(uuid, mib, 0, True), NODE)


def used(pids: dict[int, int]) -> list[GpuProcess]:
    return [GpuProcess(pid, mib << 20) for pid, mib in pids.items()]


def test_processes_are_their_pods_shares_and_the_rest_no_shares() -> None:
    train, infer = share("train", (PodRef("train-0", "u-train"),)), share("infer", (PodRef("infer-0", "u-infer"),))
    users = {("ml", "train", "gpu-0"): [Holder("ml", "train-0", "main")],
             ("ml", "infer", "gpu-0"): [Holder("ml", "infer-0", "server"), Holder("ml", "infer-0", "sidecar")]}
    owners = {1: CgroupOwner("u-train", "c" * 64), 2: CgroupOwner("u-train", "d" * 64), 3: CgroupOwner("u-infer", None),
              4: CgroupOwner("u-elsewhere", None), 5: None}
    found = share_uses([train, infer], users, {"GPU-a": used({1: 100, 2: 50, 3: 7, 4: 1000, 5: 3, 6: 9})}, owners)
    assert found == {"GPU-a": DeviceShares([
        ShareUse(infer, Holder("ml", "infer-0", ""), 7.0, 1),  # two containers use the claim: the pod's, not one's
        ShareUse(train, Holder("ml", "train-0", "main"), 150.0, 2)], 1012.0, 3)}  # 4: another pod, 5: none, 6: unread


def test_unknown_processes_show_no_use_and_a_share_without_a_known_pod_still_shows() -> None:
    lonely = share("lonely", ())
    found = share_uses([lonely], {}, {"GPU-a": None}, {})
    assert found == {"GPU-a": DeviceShares([ShareUse(lonely, Holder("ml", "", ""), None, None)], None, None)}


def test_a_pod_the_kubelet_lists_but_the_checkpoint_does_not_gets_a_series_without_processes() -> None:
    """A claim reserved for a second pod after it was prepared: its processes cannot be told by pod UID."""
    shared = share("shared", (PodRef("a", "u-a"),))
    users = {("ml", "shared", "gpu-0"): [Holder("ml", "a", "main"), Holder("ml", "b", "main")]}
    found = share_uses([shared], users, {"GPU-a": used({1: 5, 2: 6})},
                       {1: CgroupOwner("u-a", None), 2: CgroupOwner("u-b", None)})["GPU-a"]
    assert [(u.holder.pod, u.used_mib) for u in found.uses] == [("a", 5.0), ("b", 0.0)]
    assert found.others_mib == 6.0


def test_a_pod_with_two_shares_of_a_device_counts_its_processes_in_the_first() -> None:
    pod = (PodRef("p", "u-p"),)
    first, second = share("a-claim", pod), share("b-claim", pod)
    found = share_uses([second, first], {}, {"GPU-a": used({1: 5})}, {1: CgroupOwner("u-p", None)})["GPU-a"]
    assert [(u.share.claim.name, u.used_mib) for u in found.uses] == [("a-claim", 5.0), ("b-claim", 0.0)]


def test_the_reader_takes_long_lists_in_one_more_call_and_refuses_endless_ones(simulate: Any) -> None:
    """Both queries, a PID listed by both counted once; a list longer than the first buffer read in a second call
    sized by NVML's answer; one longer than MAX_PROCESS_BUFFER an error naming its length; a lost GPU GpuLost; a GPU
    before Volta has no MPS query, its compute list still read."""
    import pynvml

    from gfd.discovery.errors import DiscoveryError, GpuLost
    from gfd.discovery.telemetry import MAX_PROCESS_BUFFER, PROCESS_BUFFER, running_processes

    sim = simulate({"gpus": [{"model": "A100-SXM4-80GB"}, {"model": "TITAN-X-Pascal"}]})
    pynvml.nvmlInit()
    try:
        ampere, pascal = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in (0, 1))
        sim.node.gpus[0].processes[:] = [SimProcess(1, 10, "M+C"), SimProcess(2, 20, "M"), SimProcess(3, 30)]
        assert running_processes(ampere) == [GpuProcess(1, 10 << 20), GpuProcess(2, 20 << 20), GpuProcess(3, 30 << 20)]
        many = [SimProcess(100 + i, 1) for i in range(3 * PROCESS_BUFFER)]
        sim.node.gpus[0].processes[:] = many
        calls = sim.library.calls["nvmlDeviceGetComputeRunningProcesses_v3"]
        assert [p.pid for p in running_processes(ampere) or []] == [p.pid for p in many]
        assert sim.library.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == calls + 2
        sim.node.gpus[0].processes[:] = [SimProcess(100 + i, 1) for i in range(MAX_PROCESS_BUFFER + 1)]
        with pytest.raises(DiscoveryError, match=f"{MAX_PROCESS_BUFFER + 1} processes: ERROR_INSUFFICIENT_SIZE"):
            running_processes(ampere)
        sim.node.gpus[1].processes[:] = [SimProcess(7, 1)]
        assert running_processes(pascal) == [GpuProcess(7, 1 << 20)]
        sim.node.gpus[1].lost = True
        with pytest.raises(GpuLost):
            running_processes(pascal)
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(params=["real-cgroups", "proc-root"])
def pods(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PodProcesses]:
    """Processes in pods: in real cgroups (root, a writable hierarchy), and by a proc root of the test's."""
    real = request.param == "real-cgroups"
    if real and writable_hierarchy() is None:
        missing("needs root and a writable cgroup hierarchy (real pod cgroups)",
                "run the tests as root, as .ci/run does")
    world = PodProcesses(real, tmp_path / "proc")
    yield world
    world.close()


def shared_node(simulate: Any, request: pytest.FixtureRequest) -> tuple[Simulation, DeviceModel, Allocatable]:
    """Two simulated A100s, NVML open while the test runs (as the exporter holds it): the simulation, the model
    and the DRA driver's device `gpu-0`."""
    sim = simulate(SHARED)
    source = NodeSource("auto")
    source.host_root = sim.host_root
    source.open()
    request.addfinalizer(source.close)
    model = source.read()
    return sim, model, next(d for d in allocatable_devices(model) if d.name == "gpu-0")


def prepared(checkpoint: Path, claim: str, pod: PodRef, device: Allocatable, memory: str, share_id: str) -> ShareLimits:
    """The claim prepared as the DRA driver checkpoints it: its share's limits from the scheduler's
    consumedCapacity, through the driver's own share_limits and Checkpoint."""
    result = AllocationResult("gpu", "gpu.nvidia.com", NODE, device.name, share_id, consumed_capacity={
        "memory": memory, "compute": "0"})
    limits = share_limits(result, device, ConsumableShares("memory", enforcement=MPS))
    assert limits is not None and limits.enforced
    cdi = f"k8s.gpu.nvidia.com/claim=uid-{claim}-{device.name}"
    Checkpoint(str(checkpoint), "boot").put(PreparedClaim(f"uid-{claim}", "ml", claim, PREPARE_COMPLETED, (
        PreparedDevice(("gpu",), NODE, device.name, (cdi,), share_id, share=limits),), (pod,)))
    return limits


def test_each_share_shows_its_pod_limit_and_the_memory_its_processes_use(
        simulate: Any, kubelet: KubeletStandIn, pods: PodProcesses, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    sim, model, gpu0 = shared_node(simulate, request)
    trainer, server = pods.start(), pods.start(SYSTEMD)
    stranger, host = pods.start(), pods.outside()  # a pod holding no share; a process of no pod
    checkpoint = tmp_path / "gpu.nvidia.com"
    checkpoint.mkdir()
    prepared(checkpoint, "train", PodRef("trainer-0", trainer.pod_uid), gpu0, "30Gi", "share-t")
    prepared(checkpoint, "infer", PodRef("server-0", server.pod_uid), gpu0, "20Gi", "share-i")
    kubelet.run_claim_pod("ml", "trainer-0", "main", "train", "uid-train", [("gpu.nvidia.com", NODE, "gpu-0")])
    kubelet.run_claim_pod("ml", "server-0", "vllm", "infer", "uid-infer", [("gpu.nvidia.com", NODE, "gpu-0")])
    sim.node.gpus[0].processes[:] = [SimProcess(trainer.pid, 12 * GIB, "M+C"), SimProcess(server.pid, 3 * GIB, "M"),
                                     SimProcess(stranger.pid, 2 * GIB), SimProcess(host, 500)]
    collector = TelemetryCollector(lambda: model, 10, kubelet.pod_resources_socket, NODE, xids=True,
                                   checkpoint_dir=str(checkpoint), proc_root=pods.proc_root)
    collector.collect_once()
    s = Scrape(collector.exposition.decode())
    uuid = model.gpus[0].uuid

    def of(name: str) -> dict[tuple[str, str, str, str], float]:
        return {(x.labels["pod"], x.labels["container"], x.labels["dra_claim_name"], x.labels["dra_share_id"]):
                x.value for x in Scrape(collector.exposition.decode()).series(name, UUID=uuid)}

    assert of("gpu_metrics_share_memory_limit_mib") == {("trainer-0", "main", "train", "share-t"): 30 * GIB,
                                                        ("server-0", "vllm", "infer", "share-i"): 20 * GIB}
    assert of("gpu_metrics_share_memory_used_mib") == {("trainer-0", "main", "train", "share-t"): 12 * GIB,
                                                       ("server-0", "vllm", "infer", "share-i"): 3 * GIB,
                                                       ("", "", "", ""): 2 * GIB + 500}
    assert of("gpu_metrics_share_processes") == {("trainer-0", "main", "train", "share-t"): 1,
                                                 ("server-0", "vllm", "infer", "share-i"): 1, ("", "", "", ""): 2}
    assert s.value("gpu_metrics_device_shares", UUID=uuid) == 2
    (trainer_series,) = s.series("gpu_metrics_share_memory_used_mib", pod="trainer-0")
    assert trainer_series.labels | {"DCGM_FI_DRIVER_VERSION": ""} == {
        "gpu": "0", "UUID": uuid, "pci_bus_id": model.gpus[0].pci_bus_id, "device": "nvidia0",
        "modelName": model.gpus[0].name, "Hostname": NODE, "DCGM_FI_DRIVER_VERSION": "", "container": "main",
        "namespace": "ml", "pod": "trainer-0", "dra_claim_name": "train", "dra_claim_namespace": "ml",
        "dra_driver_name": "gpu.nvidia.com", "dra_pool_name": NODE, "dra_device_name": "gpu-0",
        "dra_share_id": "share-t"}
    assert not s.series("gpu_metrics_share_memory_used_mib", UUID=model.gpus[1].uuid)  # no share there
    # The trainer's process ends, the claims are unprepared: the series go with them.
    sim.node.gpus[0].processes[:] = [p for p in sim.node.gpus[0].processes if p.pid != trainer.pid]
    collector.collect_once()
    assert of("gpu_metrics_share_processes")[("trainer-0", "main", "train", "share-t")] == 0
    assert of("gpu_metrics_share_memory_used_mib")[("trainer-0", "main", "train", "share-t")] == 0
    (checkpoint / "checkpoint.json").unlink()
    collector.collect_once()
    assert not of("gpu_metrics_share_memory_limit_mib")


def test_shares_on_nvidias_mock_nvml(kubelet: KubeletStandIn, tmp_path: Path) -> None:
    """NVIDIA's mock lists the processes its config names (as compute processes; it has no MPS query): a real
    child's PID there is attributed through its cgroup as on our simulator. The exporter runs on the mock as a
    program (the mock replaces NVML for the whole process)."""
    mock = require_shared("nvml-mock", "libnvidia-ml.so.1", "configs/mock-nvml-config-h100.yaml")
    world = PodProcesses(False, tmp_path / "proc")
    try:
        trainer = world.start()
        config = yaml.safe_load((mock / "configs" / "mock-nvml-config-h100.yaml").read_text())
        config["devices"][0]["processes"] = [{"pid": trainer.pid, "type": "C", "used_memory_mib": 4096}]
        (tmp_path / "mock.yaml").write_text(yaml.safe_dump(config))
        checkpoint = tmp_path / "gpu.nvidia.com"
        checkpoint.mkdir()
        limits = ShareLimits(config["devices"][0]["uuid"], 16 * GIB, 0, True)
        Checkpoint(str(checkpoint), "boot").put(PreparedClaim("uid-train", "ml", "train", PREPARE_COMPLETED, (
            PreparedDevice(("gpu",), NODE, "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-train-gpu-0",), "share-t",
                           share=limits),), (PodRef("trainer-0", trainer.pod_uid),)))
        kubelet.run_claim_pod("ml", "trainer-0", "main", "train", "uid-train", [("gpu.nvidia.com", NODE, "gpu-0")])
        port = free_port()
        exporter = subprocess.Popen([str(BIN / "gpu-metrics-exporter"), f"--address=127.0.0.1:{port}",
                                     f"--pod-resources-socket={kubelet.pod_resources_socket}",
                                     f"--dra-checkpoint-dir={checkpoint}", f"--proc-root={world.proc_root}",
                                     "--collect-interval=250ms", "--log-format=json"],
                                    env={"PATH": os.environ["PATH"], "NODE_NAME": NODE, "LD_LIBRARY_PATH": str(mock),
                                         "MOCK_NVML_CONFIG": str(tmp_path / "mock.yaml")})
        try:
            eventually(lambda: "gpu_metrics_share_memory_used_mib" in (http_get(
                f"http://127.0.0.1:{port}/metrics") or (0, ""))[1], timeout=30)
            s = scrape(port)
        finally:
            kill_all([exporter])
        assert s.value("gpu_metrics_share_memory_used_mib", pod="trainer-0", container="main") == 4096
        assert s.value("gpu_metrics_share_memory_limit_mib", pod="trainer-0") == 16 * GIB
        assert s.value("gpu_metrics_share_processes", pod="", dra_share_id="") == 0
    finally:
        world.close()


def test_series_per_device_are_bounded_and_the_shares_all_counted(
        simulate: Any, kubelet: KubeletStandIn, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """More one-GiB shares of one GPU than MAX_HOLDERS, and 300 processes of the first share's pod on it:
    MAX_HOLDERS shares get series and the count has them all; the MAX_PROCESSES largest processes are looked up and
    attributed, the rest count as no share's, and one line says so."""
    sim, model, gpu0 = shared_node(simulate, request)
    checkpoint = tmp_path / "gpu.nvidia.com"
    checkpoint.mkdir()
    shares = MAX_HOLDERS + 12
    for i in range(shares):
        prepared(checkpoint, f"c{i:03d}", PodRef(f"p{i:03d}", f"{i:08x}-0000-4000-8000-000000000000"), gpu0, "1Gi",
                 f"s{i}")
    sim.node.gpus[0].processes[:] = [SimProcess(10_000 + i, 300 - i) for i in range(300)]
    for i in range(300):
        fake_proc(tmp_path / "proc", 10_000 + i, CGROUPFS, "00000000-0000-4000-8000-000000000000", "c" * 64)
    collector = TelemetryCollector(lambda: model, 10, kubelet.pod_resources_socket, NODE, xids=True,
                                   checkpoint_dir=str(checkpoint), proc_root=str(tmp_path / "proc"))
    with structlog.testing.capture_logs() as logged:
        collector.collect_once()
        collector.collect_once()
    s = Scrape(collector.exposition.decode())
    assert len(s.series("gpu_metrics_share_memory_limit_mib")) == MAX_HOLDERS
    assert s.value("gpu_metrics_device_shares", UUID=model.gpus[0].uuid) == shares
    assert s.value("gpu_metrics_share_processes", pod="p000") == MAX_PROCESSES
    assert s.value("gpu_metrics_share_memory_used_mib", pod="p000") == sum(range(300 - MAX_PROCESSES + 1, 301))
    assert s.value("gpu_metrics_share_processes", pod="") == 300 - MAX_PROCESSES
    capped = [e for e in logged if e["event"] == "more processes on the device than are attributed to pods"]
    assert [(e["processes"], e["attributed"]) for e in capped] == [("300", str(MAX_PROCESSES))]
