"""The DRA driver's gRPC services on real unix sockets (plugin/dra/server.py), called through the kubelet's
API as our protos spell it; the protos themselves are checked against the kubelet's published field numbers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from gfd.lifecycle import Scope
from plugin.api import (
    dra_health_pb2,
    dra_health_pb2_grpc,
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)
from plugin.cdi.spec import ContainerEdits
from plugin.dra import taints
from plugin.dra.checkpoint import Checkpoint
from plugin.dra.claims import AllocationResult, ClaimRef, ResourceClaim
from plugin.dra.devices import Allocatable, allocatable_devices
from plugin.dra.prepare import Preparer
from plugin.dra.server import DraPluginServer, HealthBoard
from plugin.server import ServeError
from tests import builders

NODE = "gpu-node-1"


class Claims:
    def __init__(self) -> None:
        self.claims: dict[str, ResourceClaim] = {}

    def add(self, name: str, uid: str, device: str, share_id: str | None = None) -> None:
        self.claims[name] = ResourceClaim(ClaimRef("default", name, uid), True, (
            AllocationResult("gpu", "gpu.nvidia.com", NODE, device, share_id),))

    def read(self, ref: ClaimRef) -> ResourceClaim:
        return self.claims[ref.name]


class Specs:
    def __init__(self) -> None:
        self.written: dict[str, list[str]] = {}

    def write(self, claim_uid: str, devices: Sequence[Allocatable],
              extra: Mapping[str, ContainerEdits] | None = None) -> None:
        self.written[claim_uid] = [d.name for d in devices]

    def remove(self, claim_uid: str) -> None:
        self.written.pop(claim_uid, None)


class Plugin:
    def __init__(self, root: Path) -> None:
        self.registrar = root / "plugins_registry" / "gpu.nvidia.com-reg.sock"
        self.dra = root / "plugins" / "gpu.nvidia.com" / "dra.sock"
        self.claims, self.specs, self.board = Claims(), Specs(), HealthBoard()
        self.devices = allocatable_devices(builders.model(builders.gpu(0), builders.gpu(1)))
        (root / "plugins" / "gpu.nvidia.com").mkdir(parents=True)
        preparer = Preparer(NODE, Checkpoint(str(root / "plugins" / "gpu.nvidia.com"), "boot"), self.claims,
                            self.specs, {d.name: d for d in self.devices})
        self.scope = Scope("dra server")
        self.server = DraPluginServer(str(self.registrar), str(self.dra), preparer, self.board, self.scope)

    def stop(self) -> None:
        self.server.stop()
        self.scope.close()
        assert not self.scope.hung  # every gRPC worker returned

    def channel(self, path: Path) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{path}")


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    p = Plugin(tmp_path)
    p.server.start()
    yield p
    p.stop()


def test_registration_tells_the_kubelet_what_nvidias_driver_tells_it(plugin: Plugin) -> None:
    with plugin.channel(plugin.registrar) as channel:
        stub = pluginregistration_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
        info = stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=5)
        assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == \
            ("DRAPlugin", "gpu.nvidia.com", str(plugin.dra), ["v1.DRAPlugin", "v1beta1.DRAPlugin"])
        stub.NotifyRegistrationStatus(pluginregistration_pb2.RegistrationStatus(plugin_registered=True), timeout=5)
        assert plugin.server.registration.registered.is_set()
        stub.NotifyRegistrationStatus(pluginregistration_pb2.RegistrationStatus(
            plugin_registered=False, error="version not supported"), timeout=5)
        assert not plugin.server.registration.registered.is_set()
        assert plugin.server.registration.error == "version not supported"


@pytest.mark.parametrize(("pb2", "grpc_module"), [(dra_v1_pb2, dra_v1_pb2_grpc),
                                                  (dra_v1beta1_pb2, dra_v1beta1_pb2_grpc)])
def test_both_api_versions_prepare_on_the_one_socket(plugin: Plugin, pb2: Any, grpc_module: Any) -> None:
    plugin.claims.add("ok", "uid-ok", "gpu-0", share_id="s-1")
    plugin.claims.add("bad", "uid-bad", "gpu-7")
    with plugin.channel(plugin.dra) as channel:
        stub = grpc_module.DRAPluginStub(channel)
        claims = [pb2.Claim(namespace="default", name="ok", uid="uid-ok"),
                  pb2.Claim(namespace="default", name="bad", uid="uid-bad")]
        answer = stub.NodePrepareResources(pb2.NodePrepareResourcesRequest(claims=claims), timeout=5)
        assert set(answer.claims) == {"uid-ok", "uid-bad"}
        ok = answer.claims["uid-ok"]
        assert ok.error == ""
        assert [(list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids), d.share_id)
                for d in ok.devices] == [(["gpu"], NODE, "gpu-0", ["k8s.gpu.nvidia.com/claim=uid-ok-gpu-0"], "s-1")]
        assert answer.claims["uid-bad"].error.endswith('allocatable not found for device "gpu-7"')
        assert not answer.claims["uid-bad"].devices
        undone = stub.NodeUnprepareResources(pb2.NodeUnprepareResourcesRequest(claims=claims), timeout=5)
        assert {uid: c.error for uid, c in undone.claims.items()} == {"uid-ok": "", "uid-bad": ""}
    assert plugin.specs.written == {}


def test_device_health_streams_to_the_kubelet(plugin: Plugin) -> None:
    plugin.board.update(taints.kubelet_view(plugin.devices, taints.HEALTHY))
    with plugin.channel(plugin.dra) as channel:
        stub = dra_health_pb2_grpc.DRAResourceHealthStub(channel)  # type: ignore[no-untyped-call]
        stream = stub.NodeWatchResources(dra_health_pb2.NodeWatchResourcesRequest(), timeout=10)
        first = next(stream)
        assert [(d.device.pool_name, d.device.device_name, d.health) for d in first.devices] == \
            [(NODE, "gpu-0", dra_health_pb2.HEALTHY), (NODE, "gpu-1", dra_health_pb2.HEALTHY)]
        lost = taints.DeviceHealth({("GPU-0001", -1, -1): (taints.gpu_lost(),)})
        plugin.board.update(taints.kubelet_view(plugin.devices, lost))
        second = next(stream)
        assert [(d.device.device_name, d.health, d.message) for d in second.devices] == \
            [("gpu-0", dra_health_pb2.HEALTHY, ""), ("gpu-1", dra_health_pb2.UNHEALTHY, "GPU is lost")]
        ended = threading.Event()

        def drain() -> None:
            for _ in stream:
                pass
            ended.set()

        threading.Thread(target=drain, daemon=True).start()
        plugin.server.stop()
        assert ended.wait(5)  # a stopping server ends the kubelet's stream instead of hanging on it


def test_kubelet_health_reads_the_taints_as_nvidia_does() -> None:
    assert taints.kubelet_health(()) == ("Healthy", "")
    assert taints.kubelet_health((taints.xid(48, critical=False),)) == ("Healthy", "")
    assert taints.kubelet_health((taints.xid(79),)) == ("Unhealthy", "critical XID 79 reported by NVML")
    assert taints.kubelet_health((taints.unmonitored(), taints.gpu_lost())) == ("Unhealthy", "GPU is lost")
    assert taints.kubelet_health((taints.unmonitored(),)) == ("Unknown", "device health is not monitored")


def test_a_stale_socket_is_replaced_and_a_live_one_left_alone(tmp_path: Path) -> None:
    p = Plugin(tmp_path)
    p.registrar.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(p.registrar))
    stale.close()  # the file of a socket nobody serves any more
    p.server.start()
    try:
        with p.channel(p.registrar) as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            assert stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=5).name == "gpu.nvidia.com"
        other = Plugin(tmp_path / "second")
        other.server.dra_socket = other.server.registration.endpoint = str(p.dra)
        with pytest.raises(ServeError, match="is served by another running process"):
            other.server.start()
        assert p.dra.exists()
        other.stop()
    finally:
        p.stop()
    assert not p.dra.exists() and not p.registrar.exists()


# The kubelet's protos (staging/src/k8s.io/kubelet/pkg/apis/...): package, and per message its fields' numbers.
KUBELET = {
    dra_v1_pb2: ("k8s.io.kubelet.pkg.apis.dra.v1", {
        "NodePrepareResourcesRequest": {"claims": 1}, "NodePrepareResourcesResponse": {"claims": 1},
        "NodePrepareResourceResponse": {"devices": 1, "error": 2},
        "Device": {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4, "share_id": 5},
        "NodeUnprepareResourcesRequest": {"claims": 1}, "NodeUnprepareResourcesResponse": {"claims": 1},
        "NodeUnprepareResourceResponse": {"error": 1}, "Claim": {"namespace": 1, "uid": 2, "name": 3}}),
    pluginregistration_pb2: ("pluginregistration", {
        "PluginInfo": {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4},
        "RegistrationStatus": {"plugin_registered": 1, "error": 2}, "RegistrationStatusResponse": {},
        "InfoRequest": {}}),
    dra_health_pb2: ("v1alpha1", {
        "NodeWatchResourcesRequest": {}, "DeviceIdentifier": {"pool_name": 1, "device_name": 2},
        "DeviceHealth": {"device": 1, "health": 2, "last_updated_time": 3, "health_check_timeout_seconds": 4,
                         "message": 5},
        "NodeWatchResourcesResponse": {"devices": 1}}),
}


@pytest.mark.parametrize("module", list(KUBELET), ids=lambda m: m.__name__)
def test_the_protos_are_the_kubelets_on_the_wire(module: Any) -> None:
    package, messages = KUBELET[module]
    assert module.DESCRIPTOR.package == package
    for name, fields in messages.items():
        descriptor = module.DESCRIPTOR.message_types_by_name[name]
        assert {f.name: f.number for f in descriptor.fields} == fields, name
    services = {s.full_name: [m.name for m in s.methods] for s in module.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "k8s.io.kubelet.pkg.apis.dra.v1": {"k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin": [
            "NodePrepareResources", "NodeUnprepareResources"]},
        "pluginregistration": {"pluginregistration.Registration": ["GetInfo", "NotifyRegistrationStatus"]},
        "v1alpha1": {"v1alpha1.DRAResourceHealth": ["NodeWatchResources"]},
    }[package]
    assert {v.name: v.number for v in dra_health_pb2.HealthStatus.DESCRIPTOR.values} == \
        {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def test_v1beta1_is_v1_in_its_own_package() -> None:
    assert dra_v1beta1_pb2.DESCRIPTOR.package == "k8s.io.kubelet.pkg.apis.dra.v1beta1"
    for name, message in dra_v1_pb2.DESCRIPTOR.message_types_by_name.items():
        beta = dra_v1beta1_pb2.DESCRIPTOR.message_types_by_name[name]
        assert [(f.name, f.number, f.type) for f in beta.fields] == [(f.name, f.number, f.type) for f in message.fields]
