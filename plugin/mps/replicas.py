"""The device plugin's MPS (upstream cmd/mps-control-daemon/mps/daemon.go): one control daemon per resource
shared with MPS, serving that resource's GPUs, each client limited to its replica's share of each GPU's
memory and of its SMs."""

from __future__ import annotations

from gfd.model import Gpu
from plugin.mps import MpsError
from plugin.mps.daemon import Limits, MpsDaemon
from plugin.mps.root import MpsRoot
from plugin.resources import Resource

# MPS clients per GPU: 48 from Volta on, 16 before (NVIDIA MPS documentation, "Limitations"); upstream's
# check compares the compute capability with 7.5, so a V100 (7.0) gets 16: kept, as upstream.
MAX_CLIENTS = 48
MAX_CLIENTS_PRE_VOLTA = 16


def gpus_of(resource: Resource) -> list[Gpu]:
    return list({d.gpu.uuid: d.gpu for d in resource.devices}.values())


def replicas_per_gpu(resource: Resource) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in resource.devices:
        counts[device.gpu.uuid] = counts.get(device.gpu.uuid, 0) + 1
    return counts


def replica_limits(resource: Resource) -> Limits:
    """Per GPU, its memory divided among its replicas (GPUs of unknown memory get no limit), and each
    client 100/replicas percent of the SMs."""
    replicas = replicas_per_gpu(resource)
    gpus = gpus_of(resource)
    return Limits(100 // (len(resource.devices) // len(gpus)),
                  {g.uuid: g.memory_mib // replicas[g.uuid] for g in gpus if g.memory_mib})


def check_replicas(resource: Resource) -> None:
    for gpu in gpus_of(resource):
        limit = MAX_CLIENTS if gpu.compute_capability >= (7, 5) else MAX_CLIENTS_PRE_VOLTA
        replicas = replicas_per_gpu(resource)[gpu.uuid]
        if replicas > limit:
            raise MpsError(f"invalid MPS configuration: invalid device maximum allowed replicas exceeded: "
                           f"{replicas} > {limit}")


def resource_daemon(resource: Resource, root: MpsRoot, program: str = "") -> MpsDaemon:
    """The daemon of `resource`, named by it under `root`; MpsError when its replicas exceed MPS's clients."""
    check_replicas(resource)
    return MpsDaemon(root, resource.name, gpus_of(resource), replica_limits(resource), program)
