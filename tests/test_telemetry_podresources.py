"""Pod attribution from a hostile kubelet answer (issue 20, item 5): a PodResources reply of 1.7 MB listing
20 000 containers on one GPU made a 98.7 MB exposition. The series per device stop at MAX_HOLDERS, the
holders are still counted, and one warning says so."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import grpc
import pytest
import structlog.testing

from gfd.discovery.session import NodeSource
from plugin.api.podresources_pb2 import ListPodResourcesRequest
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub
from plugin.telemetry.collector import TelemetryCollector
from plugin.telemetry.snapshot import MAX_HOLDERS
from tests.kubelet import KubeletStandIn
from tests.scrape import Scrape


def reply_size(kubelet: KubeletStandIn) -> int:
    with grpc.insecure_channel(f"unix://{kubelet.pod_resources_socket}") as channel:
        stub = PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        return int(stub.List(ListPodResourcesRequest(), timeout=10).ByteSize())


@pytest.fixture
def kubelet() -> Iterator[KubeletStandIn]:
    with tempfile.TemporaryDirectory(prefix="k-", dir="/tmp") as tmp:  # short: a unix socket path
        os.makedirs(os.path.join(tmp, "device-plugins"))
        stand_in = KubeletStandIn(os.path.join(tmp, "device-plugins"))
        yield stand_in
        stand_in.stop()


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
