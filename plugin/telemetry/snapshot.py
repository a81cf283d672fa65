"""Metric families from one collection: dcgm-exporter's names, types, HELP and labels (`gpu`, `UUID`,
`pci_bus_id`, `device`, `modelName`, `GPU_I_PROFILE`/`GPU_I_ID` for MIG, `Hostname`, `DCGM_FI_DRIVER_VERSION`,
`err_code`/`err_msg` on XIDs, and `container`/`namespace`/`pod`, empty when no pod holds the device).
A device held by several containers (replicas) gets one series per holder, for at most MAX_HOLDERS of them;
`gpu_metrics_device_holders` counts them all.

Ours beside them, for the shares of our DRA driver (plugin/telemetry/shares.py): per share and pod, its memory
limit, the memory and number of its processes, labelled as dcgm-exporter labels a DRA device (`dra_claim_name`,
`dra_claim_namespace`, `dra_driver_name`, `dra_pool_name`, `dra_device_name`) plus the share's `dra_share_id`;
the device's processes of no share on a series with those labels and the pod's empty; at most MAX_HOLDERS shares'
series per device, `gpu_metrics_device_shares` counting them all. Pure: no NVML, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from gfd.discovery.telemetry import FIELDS, Sample
from gfd.model import Gpu, LostGpu, MigDevice
from plugin.dra.config import DRIVER_NAME
from plugin.telemetry.podresources import Holder
from plugin.telemetry.shares import DeviceShares
from plugin.telemetry.xid_names import message

if TYPE_CHECKING:  # the share records import the kubernetes client (collector.CheckpointShares)
    from plugin.dra.shares import Share

XID = "DCGM_FI_DEV_XID_ERRORS"
UP = "gpu_metrics_gpu_up"
HOLDERS = "gpu_metrics_device_holders"
SHARE_LIMIT = "gpu_metrics_share_memory_limit_mib"
SHARE_USED = "gpu_metrics_share_memory_used_mib"
SHARE_PROCESSES = "gpu_metrics_share_processes"
SHARES = "gpu_metrics_device_shares"
DRA_LABELS = ("dra_claim_name", "dra_claim_namespace", "dra_driver_name", "dra_pool_name", "dra_device_name",
              "dra_share_id")
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
    shares: dict[str, DeviceShares] = field(default_factory=dict)  # device UUID -> its shares' uses


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
    return [m for m in (*by_name.values(), xid, up, held) if m.samples] + share_families(c)


def share_families(c: Collection) -> list[Metric]:
    limit = Metric(SHARE_LIMIT, "Device memory a DRA share may use: the memory its claim consumed (in MiB).", "gauge")
    used = Metric(SHARE_USED, "Device memory used by the processes of the pod holding the DRA share (in MiB); "
                              "without a pod: the device's processes of no share.", "gauge")
    processes = Metric(SHARE_PROCESSES, "Processes on the device in the pod holding the DRA share; without a pod: "
                                        "the device's processes of no share.", "gauge")
    count = Metric(SHARES, f"DRA shares of the device; the share families have series for the first {MAX_HOLDERS}.",
                   "gauge")
    for device in c.devices:
        shared = c.shares.get(device.mig.uuid if device.mig is not None else device.gpu.uuid)
        if shared is None:
            continue
        base = labels(device.gpu, device.mig, c.hostname, c.driver_version, NOBODY)
        count.add_sample(SHARES, base, len({(u.share.claim, u.share.share_id) for u in shared.uses}))
        for use in shared.uses[:MAX_HOLDERS]:
            use_labels = labels(device.gpu, device.mig, c.hostname, c.driver_version, use.holder) | \
                dra_labels(use.share)
            if use.share.limits.memory_mib is not None:
                limit.add_sample(SHARE_LIMIT, use_labels, use.share.limits.memory_mib)
            if use.used_mib is not None and use.processes is not None:
                used.add_sample(SHARE_USED, use_labels, use.used_mib)
                processes.add_sample(SHARE_PROCESSES, use_labels, use.processes)
        if shared.others_mib is not None and shared.others is not None:
            nobody = base | dra_labels(None)
            used.add_sample(SHARE_USED, nobody, shared.others_mib)
            processes.add_sample(SHARE_PROCESSES, nobody, shared.others)
    return [m for m in (limit, used, processes, count) if m.samples]


def dra_labels(share: Share | None) -> dict[str, str]:
    """dcgm-exporter's labels of a DRA device (its transformation/const.go) and the share's id; empty without one."""
    if share is None:
        return dict.fromkeys(DRA_LABELS, "")
    return dict(zip(DRA_LABELS, (share.claim.name, share.claim.namespace, DRIVER_NAME, share.pool, share.device,
                                 share.share_id), strict=True))


def device_name(index: int) -> str:
    """dcgm-exporter's `device` label: `nvidia` and the GPU's DCGM id, which is its NVML index (not the
    device node's minor number; dcgm-exporter internal/pkg/collector, GPUDevice)."""
    return f"nvidia{index}"
