"""Which container holds which GPU, from the kubelet's PodResources API (v1 `List`, on
`<kubelet root>/pod-resources/kubelet.sock`)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from plugin.api.podresources_pb2 import ListPodResourcesRequest
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub

TIMEOUT_S = 2.0


class PodResourcesError(Exception):
    pass


@dataclass(frozen=True, order=True)
class Holder:
    namespace: str
    pod: str
    container: str


def holders(socket: str, resource_prefix: str = "nvidia.com/") -> dict[str, list[Holder]]:
    """Device UUID (a replica's `::n` dropped) -> the containers that hold it, sorted."""
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            response = PodResourcesListerStub(channel).List(  # type: ignore[no-untyped-call]
                ListPodResourcesRequest(), timeout=TIMEOUT_S)
    except grpc.RpcError as e:
        raise PodResourcesError(f"kubelet PodResources List on {socket}: {e.code().name}: {e.details()}") from None
    found: dict[str, set[Holder]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if not devices.resource_name.startswith(resource_prefix):
                    continue
                for device_id in devices.device_ids:
                    found.setdefault(device_id.split("::", 1)[0], set()).add(
                        Holder(pod.namespace, pod.name, container.name))
    return {uuid: sorted(h) for uuid, h in found.items()}
