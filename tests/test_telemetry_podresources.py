"""Pod attribution from the kubelet's PodResources answers: devices of DRA claims (issue 23) as well as
device-plugin devices; and a hostile answer (issue 20, item 5): a reply of 1.7 MB listing 20 000 containers on
one GPU made a 98.7 MB exposition. The series per device stop at MAX_HOLDERS, the holders are still counted,
and one warning says so."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import structlog.testing

from gfd.discovery.session import NodeSource
from plugin.api.podresources_pb2 import ListPodResourcesRequest
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub
from plugin.dra.devices import allocatable_devices
from plugin.telemetry.collector import TelemetryCollector
from plugin.telemetry.podresources import PodResourcesError, list_pods
from plugin.telemetry.snapshot import MAX_HOLDERS
from tests.kubelet import KubeletStandIn
from tests.scrape import Scrape


def reply_size(kubelet: KubeletStandIn) -> int:
    with grpc.insecure_channel(f"unix://{kubelet.pod_resources_socket}") as channel:
        stub = PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        return int(stub.List(ListPodResourcesRequest(), timeout=10).ByteSize())


def test_twenty_thousand_containers_on_one_gpu_make_a_bounded_exposition(kubelet: KubeletStandIn) -> None:
    with NodeSource("nvml", "dgx-a100") as source:
        source.open()
        model = source.read()
        crowded, shared = model.gpus[0].uuid, model.gpus[1].uuid
        with kubelet.changed:
            for i in range(20_000):
                kubelet.assigned[("flood", f"pod-{i:05d}", "main")] = ("nvidia.com/gpu", [f"{crowded}::{i}"])
            for i in range(3):  # an ordinary sharing set-up next to it keeps a series per holder
                kubelet.assigned[("ml", f"trainer-{i}", "main")] = ("nvidia.com/gpu", [f"{shared}::{i}"])
        collector = TelemetryCollector(lambda: model, 10, kubelet.pod_resources_socket, "node-1", xids=True)
        with structlog.testing.capture_logs() as logged:
            collector.collect_once()
            collector.collect_once()
    s = Scrape(collector.exposition.decode())
    print(f"exposition: {len(collector.exposition) / 1e6:.2f} MB")
    assert reply_size(kubelet) > 1_500_000  # the kubelet's answer is as large as the one issue 20 found
    assert len(collector.exposition) < 1_000_000  # 8 GPUs, ~30 families, 48 holders on one: 0.38 MB
    pods = {x.labels["pod"] for x in s.series("DCGM_FI_DEV_GPU_TEMP", UUID=crowded)}
    assert pods == {f"pod-{i:05d}" for i in range(MAX_HOLDERS)}  # the first ones in a stable order
    assert s.value("gpu_metrics_device_holders", UUID=crowded) == 20_000
    assert {x.labels["pod"] for x in s.series("DCGM_FI_DEV_GPU_TEMP", UUID=shared)} == {f"trainer-{i}"
                                                                                       for i in range(3)}
    assert s.value("gpu_metrics_device_holders", UUID=shared) == 3
    assert [(e["device"], e["holders"]) for e in logged
            if e["event"] == "more containers hold the device than get their own series"] == [(crowded, "20000")]


# One MIG-enabled A100 beside a whole one: the DRA driver offers the whole GPU and each MIG device.
MIG_AND_WHOLE = {"description": "a MIG A100 and a whole A100", "machine": "test", "driver_version": "550.54.15",
                 "cuda_driver_version": 12040,
                 "gpus": [{"model": "A100-SXM4-40GB", "count": 1, "mig": ["3g.20gb", "1g.5gb"]},
                          {"model": "A100-SXM4-40GB", "count": 1}]}


def test_devices_of_dra_claims_carry_the_pods_that_use_them(kubelet: KubeletStandIn, simulate: Any,
                                                           request: pytest.FixtureRequest) -> None:
    """The kubelet lists a claim's devices by the driver's device names (its ResourceSlices' `gpu-<minor>`
    and MIG names); a device of another driver with the same name is not ours."""
    sim = simulate(MIG_AND_WHOLE)
    source = NodeSource("auto")
    source.host_root = sim.host_root
    source.open()  # open while the collector samples, as in the exporter
    request.addfinalizer(source.close)
    model = source.read()
    offered = {d.name: d for d in allocatable_devices(model)}  # as the driver's slices name them
    small = next(name for name, d in offered.items() if d.mig is not None and d.mig.profile == "1g.5gb")
    assert "gpu-1" in offered and small.startswith("gpu-0-mig-1g5gb-")
    kubelet.run_claim_pod("ml", "trainer", "main", "trainer-gpu", "uid-1", [("gpu.nvidia.com", "node-1", "gpu-1")])
    kubelet.run_claim_pod("ml", "notebook", "jupyter", "small-gpu", "uid-2", [("gpu.nvidia.com", "node-1", small)])
    kubelet.run_claim_pod("net", "router", "main", "nic", "uid-3", [("dra.example.com", "node-1", "gpu-0")])
    collector = TelemetryCollector(lambda: model, 10, kubelet.pod_resources_socket, "node-1", xids=True)
    collector.collect_once()

    def holders(**labels: str) -> set[tuple[str, str, str]]:
        return {(x.labels["namespace"], x.labels["pod"], x.labels["container"])
                for x in Scrape(collector.exposition.decode()).series("DCGM_FI_DEV_FB_USED", **labels)}

    whole, mig_gpu = offered["gpu-1"].gpu, offered[small].gpu
    assert holders(UUID=whole.uuid) == {("ml", "trainer", "main")}
    assert holders(UUID=mig_gpu.uuid, GPU_I_PROFILE="1g.5gb") == {("ml", "notebook", "jupyter")}
    assert holders(UUID=mig_gpu.uuid, GPU_I_PROFILE="3g.20gb") == {("", "", "")}  # nobody holds it
    assert all(pod != "router" for _, pod, _ in holders())
    kubelet.delete_pod("ml", "trainer")
    collector.collect_once()
    assert holders(UUID=whole.uuid) == {("", "", "")}


def test_a_kubelet_that_does_not_answer_is_an_error_with_its_cause(tmp_path: Any) -> None:
    with pytest.raises(PodResourcesError, match="UNAVAILABLE") as e:
        list_pods(str(tmp_path / "kubelet.sock"))
    assert isinstance(e.value.__cause__, grpc.RpcError)
