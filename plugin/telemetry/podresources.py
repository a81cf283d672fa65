"""Which container holds which GPU, from the kubelet's PodResources API (v1 `List`, on
`<kubelet root>/pod-resources/kubelet.sock`): devices a device plugin allocated (`devices`, by device ID), and
devices our DRA driver prepared for a claim the container uses (`dynamic_resources`, by the driver's device
name, `gpu-<minor>` or a MIG device's name)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from gfd.model import DeviceModel
from plugin.api.podresources_pb2 import ListPodResourcesRequest, ListPodResourcesResponse
from plugin.api.podresources_pb2_grpc import PodResourcesListerStub
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import allocatable_devices

TIMEOUT_S = 2.0


class PodResourcesError(Exception):
    pass


@dataclass(frozen=True, order=True)
class Holder:
    namespace: str
    pod: str
    container: str


def dra_device_uuids(model: DeviceModel) -> dict[str, str]:
    """The DRA driver's device name -> the UUID of that GPU or MIG device (the names its slices publish)."""
    return {d.name: d.mig.uuid if d.mig is not None else d.gpu.uuid for d in allocatable_devices(model)}


def list_pods(socket: str) -> ListPodResourcesResponse:
    """The kubelet's answer, once per collection; PodResourcesError when it does not answer within TIMEOUT_S."""
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            return PodResourcesListerStub(channel).List(  # type: ignore[no-untyped-call,no-any-return]
                ListPodResourcesRequest(), timeout=TIMEOUT_S)
    except grpc.RpcError as e:
        raise PodResourcesError(f"kubelet PodResources List on {socket}: {e.code().name}: {e.details()}") from e


def holders(response: ListPodResourcesResponse, resource_prefix: str = "nvidia.com/",
            dra_devices: Mapping[str, str] | None = None) -> dict[str, list[Holder]]:
    """Device UUID (a replica's `::n` dropped) -> the containers that hold it, sorted. `dra_devices` (from
    `dra_device_uuids`) names the devices of our DRA driver's claims; the kubelet lists only this node's pods,
    so the driver's pool is this node's."""
    by_name = dra_devices or {}
    found: dict[str, set[Holder]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            holder = Holder(pod.namespace, pod.name, container.name)
            for devices in container.devices:
                if not devices.resource_name.startswith(resource_prefix):
                    continue
                for device_id in devices.device_ids:
                    found.setdefault(device_id.split("::", 1)[0], set()).add(holder)
            for claim in container.dynamic_resources:
                for device in claim.claim_resources:
                    uuid = by_name.get(device.device_name) if device.driver_name == DRIVER_NAME else None
                    if uuid is not None:
                        found.setdefault(uuid, set()).add(holder)
    return {uuid: sorted(h) for uuid, h in found.items()}


ClaimDevice = tuple[str, str, str]  # (claim namespace, claim name, our driver's device name)


def claim_holders(response: ListPodResourcesResponse) -> dict[ClaimDevice, list[Holder]]:
    """Each device of our driver's claims -> the containers that use it through that claim, sorted."""
    found: dict[ClaimDevice, set[Holder]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for claim in container.dynamic_resources:
                for device in claim.claim_resources:
                    if device.driver_name == DRIVER_NAME:
                        key = (claim.claim_namespace, claim.claim_name, device.device_name)
                        found.setdefault(key, set()).add(Holder(pod.namespace, pod.name, container.name))
    return {key: sorted(h) for key, h in found.items()}
