"""The kubelet side of the DRA driver on real unix sockets: the plugin registration service on
`<registrar dir>/gpu.nvidia.com-reg.sock`, and on `<plugins dir>/gpu.nvidia.com/dra.sock` the DRA service in
both versions the kubelet speaks (v1 and v1beta1, one implementation) and the device health service
(dra-health v1alpha1, which the kubelet polls when ResourceHealthStatus is on)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import grpc
import structlog

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
from plugin.dra.claims import ClaimRef
from plugin.dra.config import DRIVER_NAME
from plugin.dra.metrics import DraMetrics
from plugin.dra.prepare import Preparer
from plugin.dra.sockets import remove_socket, serve_unix
from plugin.dra.taints import HEALTH_HEALTHY, HEALTH_UNHEALTHY

log = structlog.get_logger("plugin.dra")

PLUGIN_TYPE = "DRAPlugin"
# Version names, not gRPC service names; the kubelet takes the newest it knows.
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
HEARTBEAT_S = 10.0  # health is re-sent at least this often: the kubelet marks it Unknown after 30 s without
_STREAM_POLL_S = 0.2  # how often an idle health stream notices the server stopping
_HEALTH = {HEALTH_HEALTHY: dra_health_pb2.HEALTHY, HEALTH_UNHEALTHY: dra_health_pb2.UNHEALTHY}


class Registration(pluginregistration_pb2_grpc.RegistrationServicer):
    """What the kubelet's plugin watcher asks once it sees the registration socket."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: Any, context: Any) -> Any:
        return pluginregistration_pb2.PluginInfo(type=PLUGIN_TYPE, name=DRIVER_NAME, endpoint=self.endpoint,
                                                 supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        if request.plugin_registered:
            self.error = ""
            self.registered.set()
            log.info("registered with the kubelet", driver=DRIVER_NAME, endpoint=self.endpoint)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("the kubelet refused the registration", driver=DRIVER_NAME, error=request.error)
        return pluginregistration_pb2.RegistrationStatusResponse()


class DraService:
    """NodePrepareResources / NodeUnprepareResources of one API version (its generated module `pb2`),
    delegated to the prepare core; per-claim failures are in the answer, never an RPC error."""

    def __init__(self, pb2: ModuleType, preparer: Preparer, metrics: DraMetrics | None = None) -> None:
        self.pb2, self.preparer, self.metrics = pb2, preparer, metrics

    def NodePrepareResources(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        answer = self.pb2.NodePrepareResourcesResponse()
        prepared_claims = self.preparer.prepare(_refs(request))
        for uid, prepared in prepared_claims.items():
            entry = answer.claims[uid]
            entry.error = prepared.error
            for d in prepared.devices:
                device = entry.devices.add(request_names=list(d.request_names), pool_name=d.pool,
                                           device_name=d.device, cdi_device_ids=list(d.cdi_device_ids))
                if d.share_id is not None:
                    device.share_id = d.share_id
        self._observe("NodePrepareResources", "prepare", started, [p.error for p in prepared_claims.values()])
        return answer

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        answer = self.pb2.NodeUnprepareResourcesResponse()
        errors = self.preparer.unprepare(_refs(request))
        for uid, error in errors.items():
            answer.claims[uid].error = error
        self._observe("NodeUnprepareResources", "unprepare", started, list(errors.values()))
        return answer

    def _observe(self, method: str, operation: str, started: float, errors: list[str]) -> None:
        if self.metrics is None:
            return
        self.metrics.calls.labels(method=method).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - started)
        for error in errors:
            self.metrics.claims.labels(operation=operation, result="error" if error else "ok").inc()


def _refs(request: Any) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]


class HealthBoard:
    """The devices' health as the kubelet is told it (taints.kubelet_view), by device name; streams wait on it."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.version = 0
        self.devices: dict[str, tuple[str, str]] = {}

    def update(self, devices: Mapping[str, tuple[str, str]]) -> None:
        with self.changed:
            if dict(devices) != self.devices:
                self.devices = dict(devices)
                self.version += 1
                self.changed.notify_all()

    def snapshot(self) -> tuple[int, dict[str, tuple[str, str]]]:
        with self.changed:
            return self.version, dict(self.devices)


class HealthService:
    """NodeWatchResources: the complete list at once, again on every change and at least every heartbeat."""

    def __init__(self, board: HealthBoard, pool: str) -> None:
        self.board, self.pool = board, pool
        self.stopping = threading.Event()

    def NodeWatchResources(self, request: Any, context: Any) -> Iterator[Any]:
        seen, sent = -1, 0.0
        while not self.stopping.is_set() and context.is_active():
            version, devices = self.board.snapshot()
            now = time.time()
            if version != seen or now - sent >= HEARTBEAT_S:
                seen, sent = version, now
                yield dra_health_pb2.NodeWatchResourcesResponse(devices=[dra_health_pb2.DeviceHealth(
                    device=dra_health_pb2.DeviceIdentifier(pool_name=self.pool, device_name=name),
                    health=_HEALTH.get(status, dra_health_pb2.UNKNOWN), last_updated_time=int(now), message=message)
                    for name, (status, message) in sorted(devices.items())])
            with self.board.changed:
                if self.board.version == seen:
                    self.board.changed.wait(_STREAM_POLL_S)


class DraPluginServer:
    """Both sockets: the DRA socket first, so the kubelet can dial it as soon as it reads the registration."""

    def __init__(self, registration_socket: str, dra_socket: str, preparer: Preparer, board: HealthBoard,
                 scope: Scope, metrics: DraMetrics | None = None) -> None:
        """The calls run on pools of `scope`: create the server before registering its `stop` with the scope, so
        that it stops before its pools are shut down."""
        self.registration_socket, self.dra_socket = registration_socket, dra_socket
        # The kubelet's health stream holds one worker; prepares and unprepares of several pods come at once.
        self.executors = scope.executor("grpc dra", 8), scope.executor("grpc dra-reg", 2)
        self.registration = Registration(dra_socket)
        self.services: list[tuple[ModuleType, DraService]] = [
            (dra_v1_pb2_grpc, DraService(dra_v1_pb2, preparer, metrics)),
            (dra_v1beta1_pb2_grpc, DraService(dra_v1beta1_pb2, preparer, metrics))]
        self.health = HealthService(board, preparer.node_name)
        self.servers: list[tuple[grpc.Server, str]] = []

    def start(self) -> None:
        """ServeError (one line) when a socket cannot be served; nothing is left serving then."""
        try:
            self.servers.append((serve_unix(self.dra_socket, self._add_dra, self.executors[0]), self.dra_socket))
            self.servers.append((serve_unix(self.registration_socket, self._add_registration, self.executors[1]),
                                 self.registration_socket))
        except Exception:
            self.stop()
            raise
        log.info("serving the kubelet", registration=self.registration_socket, dra=self.dra_socket)

    def _add_dra(self, server: grpc.Server) -> None:
        for module, service in self.services:
            module.add_DRAPluginServicer_to_server(service, server)
        dra_health_pb2_grpc.add_DRAResourceHealthServicer_to_server(self.health, server)  # type: ignore[no-untyped-call]

    def _add_registration(self, server: grpc.Server) -> None:
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(  # type: ignore[no-untyped-call]
            self.registration, server)

    def stop(self) -> None:
        """The registration socket goes first: the kubelet deregisters before the DRA socket closes."""
        self.health.stopping.set()
        with self.health.board.changed:
            self.health.board.changed.notify_all()
        for server, path in reversed(self.servers):
            server.stop(grace=0.5).wait()
            remove_socket(path)
        self.servers.clear()
