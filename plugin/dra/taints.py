"""Device health as DRA device taints (DRADeviceTaints, beta and on in Kubernetes 1.36): the scheduler does not
allocate a device with a NoSchedule taint to a claim that does not tolerate it. Keys and effects are NVIDIA's
(gpu.nvidia.com/xid with the XID as value, gpu.nvidia.com/gpu-lost, gpu.nvidia.com/unmonitored), so tolerations
written for NVIDIA's driver match ours; ours besides: gfd-py.github.io/mps-not-ready on a GPU whose MPS daemon
(enforced memory shares) is being started again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import Allocatable

XID = f"{DRIVER_NAME}/xid"
GPU_LOST = f"{DRIVER_NAME}/gpu-lost"
UNMONITORED = f"{DRIVER_NAME}/unmonitored"
# Ours (NVIDIA's driver has no MPS shares): the GPU's MPS daemon does not serve its shares' clients.
MPS_NOT_READY = "gfd-py.github.io/mps-not-ready"
NO_SCHEDULE = "NoSchedule"
NONE = "None"  # informational: the device stays allocatable
WHOLE_GPU = -1  # the gi/ci of a unit that is a whole GPU (and every MIG device on it)
Unit = tuple[str, int, int]  # (GPU UUID, GI id, CI id), as the health checker counts faults


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = NO_SCHEDULE

    def as_api(self) -> dict[str, str]:
        """The ResourceSlice form; timeAdded is left to the API server, which sets it on write."""
        return {"key": self.key, "effect": self.effect, **({"value": self.value} if self.value else {})}


def xid(number: int, critical: bool = True) -> Taint:
    return Taint(XID, str(number), NO_SCHEDULE if critical else NONE)


def gpu_lost() -> Taint:
    return Taint(GPU_LOST)


def unmonitored() -> Taint:
    return Taint(UNMONITORED, effect=NONE)


def mps_not_ready() -> Taint:
    return Taint(MPS_NOT_READY)


@dataclass(frozen=True)
class DeviceHealth:
    """Taints by unit: (uuid, -1, -1) taints a GPU and every MIG device on it, (uuid, gi, ci) one MIG device;
    `everything` taints every device (the health checks themselves are not running)."""

    units: Mapping[Unit, tuple[Taint, ...]] = field(default_factory=dict)
    everything: tuple[Taint, ...] = ()

    def of(self, gpu_uuid: str, gi: int = WHOLE_GPU, ci: int = WHOLE_GPU) -> tuple[Taint, ...]:
        """A device's taints, each key once (the first wins: whole-GPU faults before MIG-device ones)."""
        found: dict[str, Taint] = {}
        for taint in (*self.everything, *self.units.get((gpu_uuid, WHOLE_GPU, WHOLE_GPU), ()),
                      *(self.units.get((gpu_uuid, gi, ci), ()) if gi != WHOLE_GPU else ())):
            found.setdefault(taint.key, taint)
        return tuple(found.values())

    def as_api(self, gpu_uuid: str, gi: int = WHOLE_GPU, ci: int = WHOLE_GPU) -> list[dict[str, Any]]:
        return [t.as_api() for t in self.of(gpu_uuid, gi, ci)]


HEALTHY = DeviceHealth()


HEALTH_HEALTHY, HEALTH_UNHEALTHY, HEALTH_UNKNOWN = "Healthy", "Unhealthy", "Unknown"


def kubelet_health(device_taints: Sequence[Taint]) -> tuple[str, str]:
    """A device's health as the kubelet's DRA health service reports it, read from its taints as NVIDIA reads
    them: a lost GPU, then a critical XID, is Unhealthy; an unmonitored device Unknown; anything else Healthy."""
    for key, message in ((GPU_LOST, "GPU is lost"), (XID, "critical XID {} reported by NVML"),
                         (MPS_NOT_READY, "the MPS daemon of its shares does not answer")):
        for taint in device_taints:
            if taint.key == key and taint.effect != NONE:
                return HEALTH_UNHEALTHY, message.format(taint.value)
    if any(t.key == UNMONITORED for t in device_taints):
        return HEALTH_UNKNOWN, "device health is not monitored"
    return HEALTH_HEALTHY, ""


def kubelet_view(devices: Sequence[Allocatable], health: DeviceHealth) -> dict[str, tuple[str, str]]:
    """Health and message by device name, for every device the node offers."""
    return {d.name: kubelet_health(health.of(d.gpu.uuid, *d.instance)) for d in devices}


def unschedulable(devices: Sequence[Allocatable], health: DeviceHealth) -> list[str]:
    """The names of the devices the scheduler leaves alone (a NoSchedule taint)."""
    return [d.name for d in devices if any(t.effect == NO_SCHEDULE for t in health.of(d.gpu.uuid, *d.instance))]
