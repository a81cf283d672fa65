"""The DRA driver's peers, for tests and figures that run it without a kubelet or scheduler: the kubelet's calls
(registration, NodePrepareResources / NodeUnprepareResources on the socket the driver names) and claims as the
scheduler allocates them. The contract itself is tested on the real kubelet and scheduler (tests/e2e/)."""

from __future__ import annotations

import os
from typing import Any

import grpc
from kubernetes import client

from plugin.api import dra_v1_pb2, dra_v1_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc
from plugin.dra.claims import ClaimRef

GROUP, VERSION = "resource.k8s.io", "v1"


class KubeletCalls:
    """What the kubelet does with a DRA driver: GetInfo and NotifyRegistrationStatus on its registration socket,
    then the DRA v1 service on the endpoint GetInfo answered."""

    def __init__(self, registration_socket: str) -> None:
        self.registration_socket = registration_socket
        self.info: Any = None
        self._channels: list[grpc.Channel] = []
        self.dra: Any = None

    def register(self, timeout: float = 10) -> Any:
        channel = self._channel(self.registration_socket)
        registration = pluginregistration_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
        self.info = registration.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=timeout)
        registration.NotifyRegistrationStatus(pluginregistration_pb2.RegistrationStatus(plugin_registered=True),
                                              timeout=timeout)
        self.dra = dra_v1_pb2_grpc.DRAPluginStub(self._channel(self.info.endpoint))  # type: ignore[no-untyped-call]
        return self.info

    def prepare(self, *claims: ClaimRef, timeout: float = 10) -> Any:
        return self.dra.NodePrepareResources(dra_v1_pb2.NodePrepareResourcesRequest(claims=[
            dra_v1_pb2.Claim(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]), timeout=timeout)

    def unprepare(self, *claims: ClaimRef, timeout: float = 10) -> Any:
        return self.dra.NodeUnprepareResources(dra_v1_pb2.NodeUnprepareResourcesRequest(claims=[
            dra_v1_pb2.Claim(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]), timeout=timeout)

    def _channel(self, path: str) -> grpc.Channel:
        channel = grpc.insecure_channel(f"unix://{os.path.abspath(path)}")
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def allocated_claim(api: client.ApiClient, namespace: str, name: str, pool: str, *devices: str,
                    request: str = "gpu", driver: str = "gpu.nvidia.com") -> ClaimRef:
    """A ResourceClaim for `devices` of `pool`, its allocation written as the scheduler writes it."""
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "resourceclaims", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceClaim", "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": request, "exactly": {
            "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": len(devices)}}]}}})
    assert isinstance(created, dict)
    created["status"] = {"allocation": {"devices": {"results": [
        {"request": request, "driver": driver, "pool": pool, "device": d} for d in devices]}}}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, "resourceclaims", name, created)
    return ClaimRef(namespace, name, created["metadata"]["uid"])
