"""Metric families from one collection: dcgm-exporter's names, types, HELP and labels (`gpu`, `UUID`,
`pci_bus_id`, `device`, `modelName`, `GPU_I_PROFILE`/`GPU_I_ID` for MIG, `Hostname`, `DCGM_FI_DRIVER_VERSION`,
`err_code`/`err_msg` on XIDs, and `container`/`namespace`/`pod`, empty when no pod holds the device).
A device held by several containers (replicas) gets one series per holder, for at most MAX_HOLDERS of them;
`gpu_metrics_device_holders` counts them all. Pure: no NVML, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.core import Metric

from gfd.discovery.telemetry import FIELDS, Sample
from gfd.model import Gpu, LostGpu, MigDevice
from plugin.telemetry.podresources import Holder
from plugin.telemetry.xid_names import message

XID = "DCGM_FI_DEV_XID_ERRORS"
UP = "gpu_metrics_gpu_up"
HOLDERS = "gpu_metrics_device_holders"
NOBODY = Holder("", "", "")
# Series per device for its holders: the most CUDA MPS serves on one GPU (48 clients per device since Volta,
# NVIDIA's MPS documentation), so every real sharing set-up fits, while a kubelet answer listing thousands of
# containers on one GPU cannot turn each collection into tens of megabytes (issue 20).
MAX_HOLDERS = 48


@dataclass(frozen=True)
class DeviceSample:
    gpu: Gpu
    mig: MigDevice | None
    sample: Sample


@dataclass(frozen=True)
class Collection:
    devices: list[DeviceSample]
    lost: list[LostGpu]  # GPUs that did not answer this time
    hostname: str
    driver_version: str
    holders: dict[str, list[Holder]] = field(default_factory=dict)  # device UUID -> holders, sorted
    xids: dict[str, int] = field(default_factory=dict)  # GPU UUID -> last XID


def labels(gpu: Gpu, mig: MigDevice | None, hostname: str, driver: str, holder: Holder) -> dict[str, str]:
    out = {"gpu": str(gpu.index), "UUID": gpu.uuid, "pci_bus_id": gpu.pci_bus_id, "device": device_name(gpu.index),
           "modelName": gpu.name}
    if mig is not None:
        out |= {"GPU_I_PROFILE": mig.label_profile, "GPU_I_ID": str(mig.gi_id)}
    return out | {"Hostname": hostname, "DCGM_FI_DRIVER_VERSION": driver, "container": holder.container,
                  "namespace": holder.namespace, "pod": holder.pod}


def families(c: Collection) -> list[Metric]:
    by_name = {f.name: Metric(f.name, f.help, f.kind) for f in FIELDS}
    xid = Metric(XID, "Value of the last XID error encountered.", "gauge")
    up = Metric(UP, "1 when the GPU answered the last collection, 0 when it is lost.", "gauge")
    held = Metric(HOLDERS, f"Containers holding the device (kubelet PodResources); the other families have a series "
                           f"for each of the first {MAX_HOLDERS}.", "gauge")
    for device in c.devices:
        uuid = device.mig.uuid if device.mig is not None else device.gpu.uuid
        holders = c.holders.get(uuid) or [NOBODY]
        if holders[0] is not NOBODY:
            held.add_sample(HOLDERS, labels(device.gpu, device.mig, c.hostname, c.driver_version, NOBODY),
                            len(holders))
        for holder in holders[:MAX_HOLDERS]:
            device_labels = labels(device.gpu, device.mig, c.hostname, c.driver_version, holder)
            for name, value in device.sample.values.items():
                by_name[name].add_sample(name, device_labels, value)
            if device.mig is None:
                code = c.xids.get(device.gpu.uuid, 0)
                xid.add_sample(XID, device_labels | {"err_code": str(code), "err_msg": message(code)}, code)
    answered = [(d.gpu.index, d.gpu.uuid, d.gpu.pci_bus_id, 1) for d in c.devices if d.mig is None]
    for index, uuid, bus_id, value in answered + [(g.index, g.uuid, g.pci_bus_id, 0) for g in c.lost]:
        up.add_sample(UP, {"gpu": str(index), "UUID": uuid, "pci_bus_id": bus_id, "device": device_name(index),
                           "Hostname": c.hostname}, value)
    return [m for m in (*by_name.values(), xid, up, held) if m.samples]


def device_name(index: int) -> str:
    """dcgm-exporter's `device` label: `nvidia` and the GPU's DCGM id, which is its NVML index (not the
    device node's minor number; dcgm-exporter internal/pkg/collector, GPUDevice)."""
    return f"nvidia{index}"
