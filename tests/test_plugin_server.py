"""plugin/server.py: one resource's Device Plugin service on a real unix socket, called as the kubelet does."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gfd.lifecycle import Scope
from plugin.api import api_pb2, api_pb2_grpc
from plugin.config import PluginConfig
from plugin.health import HealthState
from plugin.host import NodeDevices
from plugin.metrics import PluginMetrics
from plugin.resources import build_resources
from plugin.server import DevicePluginService, ResourceServer, ServeError
from tests.builders import gpu, model


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # A short directory: a unix socket path holds at most 107 bytes, and pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="dp-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
def scope() -> Iterator[Scope]:
    """The run's scope the servers' pools belong to: closed (every worker joined) after the test."""
    with Scope("run") as run:
        yield run
    assert not run.hung and not run.alive()


def service(state: HealthState, stopping: threading.Event | None = None) -> DevicePluginService:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig())[0]
    return DevicePluginService(resource, PluginConfig(), NodeDevices(), state, (), PluginMetrics(),
                               stopping or threading.Event())


def stub(server: ResourceServer) -> api_pb2_grpc.DevicePluginStub:
    return api_pb2_grpc.DevicePluginStub(grpc.insecure_channel(f"unix://{server.path}"))  # type: ignore[no-untyped-call]


def test_list_and_watch_streams_health_changes_and_ends_on_stop(plugin_dir: Path, scope: Scope) -> None:
    state = HealthState(recovery_s=300)
    server = ResourceServer(service(state), str(plugin_dir), scope)
    server.start()
    assert server.path == f"{plugin_dir}/nvidia-gpu.sock"
    lists: list[dict[str, str]] = []
    changed = threading.Event()

    def follow() -> None:
        for response in stub(server).ListAndWatch(api_pb2.Empty()):
            lists.append({d.ID: d.health for d in response.devices})
            changed.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert changed.wait(5)
    changed.clear()
    state.fault(("GPU-0001", -1, -1), "XID 79")
    assert changed.wait(5)
    stopped = time.monotonic()
    server.stop()  # the stream ends with the server at once (not at the end of gRPC's grace), the socket goes
    follower.join(5)
    assert not follower.is_alive() and time.monotonic() - stopped < 0.4
    assert lists == [{"GPU-0000": "Healthy", "GPU-0001": "Healthy"}, {"GPU-0000": "Healthy", "GPU-0001": "Unhealthy"}]
    assert not Path(server.path).exists()


def request(*ids: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])


def test_allocate_answers_and_refuses_unknown_devices(plugin_dir: Path, scope: Scope) -> None:
    server = ResourceServer(service(HealthState(300)), str(plugin_dir), scope)
    server.start()
    try:
        response = stub(server).Allocate(request("GPU-0001"), timeout=5)
        assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-0001"
        with pytest.raises(grpc.RpcError) as e:
            stub(server).Allocate(request("GPU-9"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNKNOWN
        assert "invalid allocation request" in (e.value.details() or "")
    finally:
        server.stop()


def test_a_socket_another_live_process_serves_is_left_alone_and_a_stale_one_replaced(plugin_dir: Path,
                                                                                    scope: Scope) -> None:
    path = plugin_dir / "nvidia-gpu.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    server = ResourceServer(service(HealthState(300)), str(plugin_dir), scope)
    with pytest.raises(ServeError, match="served by another running device plugin"):
        server.start()
    assert path.exists()
    other.close()  # now a stale socket file: nobody answers on it
    server.start()
    try:
        assert not server.socket_gone()
        response = stub(server).GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        assert response.get_preferred_allocation_available
    finally:
        server.stop()


def test_a_socket_path_too_long_is_one_clear_error(plugin_dir: Path, scope: Scope) -> None:
    deep = plugin_dir / ("d" * 100)
    with pytest.raises(ServeError, match=r"longer than a unix socket path may be \(107 bytes\)"):
        ResourceServer(service(HealthState(300)), str(deep), scope).start()


def test_the_runs_stop_ends_every_stream(plugin_dir: Path, scope: Scope) -> None:
    """The streams' stop is the run's stopping event (the one stop event), set before the server stops."""
    stopping = threading.Event()
    server = ResourceServer(service(HealthState(300), stopping), str(plugin_dir), scope)
    server.start()
    try:
        stream = stub(server).ListAndWatch(api_pb2.Empty())
        assert len(next(stream).devices) == 2
        stopping.set()
        with pytest.raises(StopIteration):
            next(stream)
    finally:
        server.stop()
