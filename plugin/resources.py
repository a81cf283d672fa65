"""Resources the plugin advertises: the resource model's groups (gfd/resources.py) as plugin devices,
with the plugin's own rules (upstream internal/rm): what it refuses at start, GPUs lost at start
advertised as full GPUs, and sharing, which replaces each device of a named resource by `replicas`
copies `<UUID>::<n>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import structlog

from gfd.config import ReplicatedResources
from gfd.model import DeviceModel, Gpu, LostGpu, MigDevice
from gfd.resources import DOMAIN, Member, check_single, matches_default_patterns, resource_groups
from plugin.config import PluginConfig

log = structlog.get_logger("plugin")
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
        return f"nvidia-{self.name.removeprefix(DOMAIN)}.sock"

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
    if config.mig_strategy == "single":
        _check_single(model)
    if config.mig_strategy != "none":
        for gpu in model.gpus:
            if gpu.mig_enabled and not gpu.mig_devices:
                log.warning("MIG-enabled GPU has no MIG devices", gpu=gpu.index)
    groups: dict[str, list[PluginDevice]] = {}
    for group in resource_groups(model, config.mig_strategy):
        if config.mig_strategy == "mixed" and group.is_mig:  # single's default pattern is "*": every profile
            _check_default_patterns(group.members[0])
        groups[group.name] = [_device(m) for m in group.members]
    for gpu in lost_placeholders(model):
        # Advertised (Unhealthy, see plugin.cli) as a full GPU: its MIG layout cannot be read while it is lost.
        groups.setdefault(DOMAIN + "gpu", []).append(_device(Member(gpu)))
    return [_shared(name, devices, config) for name, devices in groups.items()]


def _check_default_patterns(member: Member) -> None:
    if member.mig is not None and not matches_default_patterns(member.mig):
        raise ResourceError(f"MIG profile '{member.mig.profile}' does not match any resource patterns")


def _device(member: Member) -> PluginDevice:
    gpu, mig = member.gpu, member.mig
    if mig is None:
        return PluginDevice(gpu.uuid, gpu.uuid, str(gpu.index), gpu)
    return PluginDevice(mig.uuid, mig.uuid, f"{gpu.index}:{mig.index}", gpu, mig)


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


def _check_single(model: DeviceModel) -> None:
    check = check_single(model)
    if check is None:
        return
    if check.mixed_modes:
        raise ResourceError("all devices on the node must be configured with the same migEnabled value")
    if check.empty:
        raise ResourceError(f"device {check.empty[0].index} has no MIG devices configured")
    if check.device_types > 1:
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
