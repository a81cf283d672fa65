"""Resources the plugin advertises, derived from the device model and the config (upstream internal/rm).

| MIG strategy | MIG-disabled GPUs  | MIG devices                 |
| none         | nvidia.com/gpu     | not exposed (GPU is a full GPU) |
| single       | nvidia.com/gpu     | nvidia.com/gpu              |
| mixed        | nvidia.com/gpu     | nvidia.com/mig-<profile>    |
Sharing replaces each device of a named resource by `replicas` copies `<UUID>::<n>`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import structlog

from gfd.config import ReplicatedResources
from gfd.model import DeviceModel, Gpu, LostGpu, MigDevice
from plugin.config import PluginConfig

log = structlog.get_logger("plugin")
PREFIX = "nvidia.com/"
# One ListAndWatch answer lists every device of a resource (~80 bytes each): 16 384 stay near 1.3 MiB,
# far below gRPC's 4 MiB default message limit.
MAX_DEVICES = 16384


class ResourceError(Exception):
    """A configuration the plugin cannot serve (fatal at start, like upstream)."""


@dataclass(frozen=True)
class PluginDevice:
    id: str  # advertised: the device UUID, or <UUID>::<n> for a replica
    uuid: str  # the GPU or MIG device UUID
    index: str  # "0", or "<gpu>:<mig>" for a MIG device (the index device-ID strategy)
    gpu: Gpu  # the physical GPU (the parent of a MIG device)
    mig: MigDevice | None = None
    replica: int | None = None

    @property
    def unit(self) -> tuple[str, int, int]:
        """The health unit: a whole GPU, or one MIG device on it."""
        return (self.gpu.uuid, self.mig.gi_id, self.mig.ci_id) if self.mig else (self.gpu.uuid, -1, -1)


@dataclass(frozen=True)
class Resource:
    name: str
    devices: tuple[PluginDevice, ...]
    replicas: int = 1
    fail_requests_greater_than_one: bool = False
    mps: bool = False

    @property
    def socket_name(self) -> str:
        return f"nvidia-{self.name.removeprefix(PREFIX)}.sock"

    @property
    def full_gpus_only(self) -> bool:
        return self.replicas == 1 and all(d.mig is None for d in self.devices)

    def device(self, device_id: str) -> PluginDevice | None:
        return self._by_id.get(device_id)

    @cached_property
    def _by_id(self) -> dict[str, PluginDevice]:
        return {d.id: d for d in self.devices}


def build_resources(model: DeviceModel, config: PluginConfig) -> list[Resource]:
    """Every resource with at least one device; ResourceError for configurations upstream refuses."""
    groups: dict[str, list[PluginDevice]] = defaultdict(list)
    strategy = config.mig_strategy
    if strategy == "single":
        _check_single(model)
    for gpu in model.gpus:
        if strategy == "none" or not gpu.mig_enabled:
            groups[PREFIX + "gpu"].append(PluginDevice(gpu.uuid, gpu.uuid, str(gpu.index), gpu))
            continue
        if not gpu.mig_devices:
            log.warning("MIG-enabled GPU has no MIG devices", gpu=gpu.index)
        for mig in gpu.mig_devices:
            name = PREFIX + "gpu" if strategy == "single" else _mixed_name(mig)
            groups[name].append(PluginDevice(mig.uuid, mig.uuid, f"{gpu.index}:{mig.index}", gpu, mig))
    for gpu in lost_placeholders(model):
        # Advertised (Unhealthy, see plugin.cli) as a full GPU: its MIG layout cannot be read while it is lost.
        groups[PREFIX + "gpu"].append(PluginDevice(gpu.uuid, gpu.uuid, str(gpu.index), gpu))
    return [_shared(name, devices, config) for name, devices in groups.items()]


def lost_placeholders(model: DeviceModel) -> tuple[Gpu, ...]:
    """GPUs lost before the plugin could read them, with what the driver still tells (UUID, bus, minor)."""
    found = []
    for lost in model.lost_gpus:
        if not lost.uuid:
            log.warning("lost GPU has no known UUID; not advertised", index=lost.index)
            continue
        found.append(_placeholder(lost))
    return tuple(found)


def _placeholder(lost: LostGpu) -> Gpu:
    return Gpu(index=lost.index, uuid=lost.uuid, name="", memory_mib=None, compute_capability=(0, 0),
               architecture="unknown", brand="unknown", pci_bus_id=lost.pci_bus_id, pci_device_id=0,
               minor_number=lost.minor_number, numa_node=None, pci_class=None, mig_capable=False, mig_enabled=False)


def _mixed_name(mig: MigDevice) -> str:
    # Upstream's default resource patterns cover only profiles whose CI slices equal GI slices.
    if mig.ci_slices != mig.gi_slices:
        raise ResourceError(f"MIG profile '{mig.profile}' does not match any resource patterns")
    return f"{PREFIX}mig-{mig.label_profile}"


def _check_single(model: DeviceModel) -> None:
    mig_gpus = [g for g in model.gpus if g.mig_enabled]
    if not mig_gpus:
        return
    if len(mig_gpus) != len(model.gpus):
        raise ResourceError("all devices on the node must be configured with the same migEnabled value")
    for gpu in mig_gpus:
        if not gpu.mig_devices:
            raise ResourceError(f"device {gpu.index} has no MIG devices configured")
    kinds = {(m.profile, m.memory_mib, m.multiprocessors, m.gi_slices, m.ci_slices, m.copy_engines, m.decoders,
              m.encoders, m.jpeg_engines, m.ofa_engines) for m in model.mig_devices}
    if len(kinds) > 1:
        raise ResourceError("more than one MIG device type present on node")


def _shared(name: str, devices: list[PluginDevice], config: PluginConfig) -> Resource:
    active: ReplicatedResources | None = config.sharing.active
    entry = active.entry(name) if active is not None else None
    if active is None or entry is None or entry.replicas < 2:
        return Resource(name, tuple(devices))
    mps = config.sharing.strategy == "mps"
    if mps and any(d.mig is not None for d in devices):
        raise ResourceError("sharing using MPS is not supported for MIG devices")
    if len(devices) * entry.replicas > MAX_DEVICES:
        raise ResourceError(f"{entry.rename or name}: {len(devices)} devices x {entry.replicas} replicas is more "
                            f"than {MAX_DEVICES} devices (fewer replicas, please)")
    replicas = tuple(PluginDevice(f"{d.uuid}::{n}", d.uuid, d.index, d.gpu, d.mig, n)
                     for d in devices for n in range(entry.replicas))
    return Resource(entry.rename or name, replicas, entry.replicas, active.fail_requests_greater_than_one, mps)
