"""Registration with the kubelet, and re-registration when it restarts.

A restarting kubelet deletes every plugin socket and creates a new kubelet.sock. Upstream waits for an
inotify event on kubelet.sock (and never re-registers when it misses one); here a cheap poll of both
the kubelet's socket and our own sockets notices either change within `poll_s`.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import structlog

from gfd.backoff import Backoff
from plugin.api import api_pb2, api_pb2_grpc
from plugin.metrics import PluginMetrics
from plugin.server import OPTIONS, ResourceServer, ServeError

log = structlog.get_logger("plugin")
API_VERSION = "v1beta1"


class KubeletRegistrar:
    def __init__(self, servers: list[ResourceServer], kubelet_socket: str, metrics: PluginMetrics,
                 poll_s: float = 0.1, register_timeout_s: float = 10.0) -> None:
        self.servers, self.kubelet_socket, self.metrics = servers, kubelet_socket, metrics
        self.poll_s, self.register_timeout_s = poll_s, register_timeout_s
        self.kubelet_inode: int | None = None
        self.pending: set[int] = set()  # servers (by position) still to register
        self.registered: set[int] = set()  # servers the kubelet has accepted (and not lost since)
        self.blocked: set[int] = set()  # servers whose socket another live process serves
        self.backoff = Backoff(initial=0.2, cap=10.0)
        self.retry_at = 0.0

    def start(self) -> None:
        for server in self.servers:
            server.start()
            log.info("serving", resource=server.service.resource.name, socket=server.path)
        self.kubelet_inode = self._kubelet_inode()
        self.pending = set(range(len(self.servers)))
        self._register_pending("start")

    def stop(self) -> None:
        for n, server in enumerate(self.servers):
            server.stop()
            if n in self.registered:  # the kubelet sees the socket go and drops the resource's devices
                log.info("stopped serving; no longer registered", resource=server.service.resource.name)
        self.registered.clear()

    def run(self, stopping: threading.Event) -> None:
        """Watch until `stopping` is set: re-serve lost sockets, re-register after kubelet restarts."""
        while not stopping.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        inode = self._kubelet_inode()
        restarted = inode is not None and inode != self.kubelet_inode
        self.kubelet_inode = inode
        for n, server in enumerate(self.servers):
            if restarted or server.socket_gone():
                if n in self.registered:
                    log.info("registration lost; serving and registering again", resource=server.service.resource.name,
                             reason="kubelet restarted" if restarted else "socket removed")
                    self.registered.discard(n)
                server.stop()
                try:
                    server.start()
                except ServeError as e:
                    if n not in self.blocked:  # logged once; retried every poll until the other one is gone
                        log.error("cannot serve", resource=server.service.resource.name, error=str(e))
                    self.blocked.add(n)
                    continue
                self.blocked.discard(n)
                self.pending.add(n)
        if self.pending and (restarted or time.monotonic() >= self.retry_at):
            self._register_pending("kubelet restart" if restarted else "retry")

    def _register_pending(self, reason: str) -> None:
        if not self.kubelet_socket:
            log.info("Skipping registration with Kubelet")
            self.pending.clear()
            return
        for n in sorted(self.pending):
            server = self.servers[n]
            try:
                self._register(server)
            except grpc.RpcError as e:
                delay = self.backoff.next_delay()
                self.retry_at = time.monotonic() + delay
                # One line per attempt whatever the number of resources waiting; the socket named once.
                where = {"kubelet": self.kubelet_socket} if self.backoff.failures == 1 else {}
                log.warning("registration with the kubelet failed; will retry", error=_brief(e, self.kubelet_socket),
                            pending=len(self.pending), attempt=self.backoff.failures, retry_in_s=round(delay, 2),
                            **where)
                return
            self.pending.discard(n)
            self.registered.add(n)
            self.metrics.registrations.labels(resource=server.service.resource.name, reason=reason).inc()
        self.backoff.reset()

    def _register(self, server: ResourceServer) -> None:
        # The kubelet calls GetDevicePluginOptions on our socket before Register returns: the server is
        # already serving and its handlers take no lock held here.
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            stub = api_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            stub.Register(api_pb2.RegisterRequest(
                version=API_VERSION, endpoint=os.path.basename(server.path),
                resource_name=server.service.resource.name, options=OPTIONS), timeout=self.register_timeout_s)
        log.info("registered with the kubelet", resource=server.service.resource.name)

    def _kubelet_inode(self) -> int | None:
        if not self.kubelet_socket:
            return None
        try:
            return os.stat(self.kubelet_socket).st_ino
        except FileNotFoundError:
            return None


def _brief(error: grpc.RpcError, socket: str) -> str:
    """gRPC's answer without the socket path it repeats: the status code and its last reason, such as
    `UNAVAILABLE: No such file or directory` for a kubelet that is not up."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    reason = details.rsplit("error: ", 1)[-1].replace(f"unix:{socket}", "").replace(socket, "").strip(" :")
    return f"{code.name}: {reason}" if code is not None else reason
