"""Metric families from one collection: dcgm-exporter's names, types and labels (`gpu`, `UUID`,
`pci_bus_id`, `device`, `modelName`, `GPU_I_PROFILE`/`GPU_I_ID` for MIG, `Hostname`,
`DCGM_FI_DRIVER_VERSION`, and `container`/`namespace`/`pod`, empty when no pod holds the device).
A device held by several containers (replicas) gets one series per holder. Pure: no NVML, no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from gfd.discovery.sysfs import GPU_NODE
from gfd.discovery.telemetry import FIELDS, Sample
from gfd.model import Gpu, LostGpu, MigDevice
from plugin.telemetry.podresources import Holder

XID = "DCGM_FI_DEV_XID_ERRORS"
UP = "gpu_metrics_gpu_up"
NOBODY = Holder("", "", "")


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
    holders: dict[str, list[Holder]] = field(default_factory=dict)
    xids: dict[str, int] | None = None  # GPU UUID -> last XID; None when no XID source runs


def labels(gpu: Gpu, mig: MigDevice | None, hostname: str, driver: str, holder: Holder) -> dict[str, str]:
    out = {"gpu": str(gpu.index), "UUID": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
           "device": _device(gpu.minor_number, gpu.index),
           "modelName": gpu.name}
    if mig is not None:
        out |= {"GPU_I_PROFILE": mig.label_profile, "GPU_I_ID": str(mig.gi_id)}
    return out | {"Hostname": hostname, "DCGM_FI_DRIVER_VERSION": driver, "container": holder.container,
                  "namespace": holder.namespace, "pod": holder.pod}


def families(c: Collection) -> list[Metric]:
    by_name = {f.name: Metric(f.name, f.unit, f.kind) for f in FIELDS}
    xid = Metric(XID, "Value of the last XID error encountered.", "gauge")
    up = Metric(UP, "1 when the GPU answered the last collection, 0 when it is lost.", "gauge")
    for device in c.devices:
        uuid = device.mig.uuid if device.mig is not None else device.gpu.uuid
        for holder in c.holders.get(uuid) or [NOBODY]:
            device_labels = labels(device.gpu, device.mig, c.hostname, c.driver_version, holder)
            for name, value in device.sample.values.items():
                by_name[name].add_sample(name, device_labels, value)
            if device.mig is None and c.xids is not None:
                xid.add_sample(XID, device_labels, c.xids.get(device.gpu.uuid, 0))
    answered = [(d.gpu.index, d.gpu.uuid, d.gpu.pci_bus_id, d.gpu.minor_number, 1) for d in c.devices if d.mig is None]
    for index, uuid, bus_id, minor, value in answered + [(g.index, g.uuid, g.pci_bus_id, g.minor_number, 0)
                                                          for g in c.lost]:
        up.add_sample(UP, {"gpu": str(index), "UUID": uuid, "pci_bus_id": bus_id,
                           "device": _device(minor, index), "Hostname": c.hostname}, value)
    return [m for m in (*by_name.values(), xid, up) if m.samples]


def _device(minor: int | None, index: int) -> str:
    """dcgm-exporter's `device`: the GPU's device node name."""
    return os.path.basename(GPU_NODE.format(minor if minor is not None else index))
