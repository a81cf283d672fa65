"""One resource's DevicePlugin gRPC service on its unix socket."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import structlog

from gfd.lifecycle import Scope
from gfd.model import Link
from plugin.allocate import AllocateError, allocate
from plugin.api import api_pb2, api_pb2_grpc
from plugin.config import PluginConfig
from plugin.health import HealthState
from plugin.host import NodeDevices
from plugin.metrics import PluginMetrics
from plugin.preferred import PreferredError, pair_scores, preferred
from plugin.resources import Resource

log = structlog.get_logger("plugin")
OPTIONS = api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)
_STREAM_POLL_S = 0.2  # how often an idle ListAndWatch stream notices the server stopping


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, resource: Resource, config: PluginConfig, node: NodeDevices, state: HealthState,
                 links: tuple[Link, ...], metrics: PluginMetrics, stopping: threading.Event) -> None:
        self.resource, self.config, self.node, self.state = resource, config, node, state
        self.scores = pair_scores(links)
        self.metrics = metrics
        self.stopping = stopping  # the run's: every stream ends when it stops
        self.streams: set[Any] = set()  # the ListAndWatch streams served now (their contexts)

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return OPTIONS

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        seen = -1
        self.streams.add(context)
        try:
            while not self.stopping.is_set() and context.is_active() and context in self.streams:
                version, devices = self.state.snapshot(self.resource)
                if version != seen:
                    seen = version
                    yield self._list(devices)
                with self.state.changed:
                    if self.state.version == seen:
                        self.state.changed.wait(_STREAM_POLL_S)
        finally:
            self.streams.discard(context)

    def _list(self, devices: list[Any]) -> Any:
        out = []
        for device, healthy in devices:
            numa = device.gpu.numa_node
            topology = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=numa)]) if numa is not None else None
            out.append(api_pb2.Device(ID=device.id, health="Healthy" if healthy else "Unhealthy", topology=topology))
            self.metrics.device_health.labels(resource=self.resource.name, device=device.id).set(int(healthy))
        return api_pb2.ListAndWatchResponse(devices=out)

    def Allocate(self, request: Any, context: Any) -> Any:
        responses = []
        for container in request.container_requests:
            try:
                result = allocate(self.resource, list(container.devices_ids), self.config, self.node)
            except AllocateError as e:
                self.metrics.allocate_errors.labels(resource=self.resource.name).inc()
                log.warning("allocate refused", resource=self.resource.name, error=str(e))
                context.abort(grpc.StatusCode.UNKNOWN, str(e))
            self.metrics.allocations.labels(resource=self.resource.name).inc(len(container.devices_ids))
            responses.append(api_pb2.ContainerAllocateResponse(
                envs=result.envs,
                mounts=[api_pb2.Mount(container_path=m.container_path, host_path=m.host_path) for m in result.mounts],
                devices=[api_pb2.DeviceSpec(container_path=d.container_path, host_path=d.host_path,
                                            permissions=d.permissions) for d in result.devices],
                annotations=result.annotations,
                cdi_devices=[api_pb2.CDIDevice(name=n) for n in result.cdi_devices],
            ))
        return api_pb2.AllocateResponse(container_responses=responses)

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        responses = []
        for container in request.container_requests:
            try:
                ids = preferred(self.resource, list(container.available_deviceIDs),
                                list(container.must_include_deviceIDs), container.allocation_size, self.scores,
                                self.config.shared_devices_allocation_policy)
            except PreferredError as e:
                context.abort(grpc.StatusCode.UNKNOWN, str(e))
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        return api_pb2.PreStartContainerResponse()


MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL (unix(7))


class ServeError(Exception):
    """A resource's socket cannot be served; the message is one line."""


def answers(path: str) -> bool:
    """True when something accepts connections on the unix socket `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


# One worker per concurrent ListAndWatch (the kubelet's, plus one during a re-registration) and room for
# Allocate / GetPreferredAllocation / the options call made inside Register.
WORKERS = 8


class ResourceServer:
    """Serves one resource on `<plugin dir>/<socket name>`; the socket exists exactly while serving.
    Its calls run on a pool of WORKERS threads of `scope` (shut down and joined when the scope closes),
    whichever start of the server (again after a kubelet restart) they came to."""

    def __init__(self, service: DevicePluginService, plugin_dir: str, scope: Scope) -> None:
        self.service = service
        self.executor = scope.executor(f"grpc {service.resource.name}", WORKERS)
        self.path = os.path.join(plugin_dir, service.resource.socket_name)
        self.server: grpc.Server | None = None
        self.inode: int | None = None

    def start(self) -> None:
        """ServeError when another live process serves this socket (it is left alone) or it cannot be bound."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path):
            if answers(self.path):
                raise ServeError(f"{self.path} is served by another running device plugin; not taking it over")
            os.unlink(self.path)  # a stale socket from an earlier run
        server = grpc.server(self.executor)
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        try:
            bound = server.add_insecure_port(f"unix://{self.path}")
        except RuntimeError:  # what grpcio raises for a failed bind
            bound = 0
        if not bound:
            too_long = len(os.fsencode(self.path)) > MAX_SOCKET_PATH
            raise ServeError(f"cannot bind {self.path}" + (f": longer than a unix socket path may be "
                                                          f"({MAX_SOCKET_PATH} bytes)" if too_long else ""))
        server.start()
        self.server = server
        try:
            self.inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            self.inode = None  # removed right after bind (a restarting kubelet): re-served by the watch loop

    def socket_gone(self) -> bool:
        """True when our socket file was deleted or replaced (e.g. by a restarting kubelet)."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True

    def stop(self) -> None:
        self.service.streams.clear()  # the kubelet's stream ends now (cleanly), not at the end of the grace below
        with self.service.state.changed:
            self.service.state.changed.notify_all()  # wake the streams so they see it
        if self.server is not None:
            self.server.stop(grace=0.5).wait()
            self.server = None
        if not self.socket_gone() and os.path.exists(self.path):
            os.unlink(self.path)
