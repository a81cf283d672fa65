"""Node-wide (system) labels: timestamp, machine type, driver/CUDA versions, gpu.mode, IMEX, vGPU."""

from __future__ import annotations

import structlog

from gfd.labels import Labels
from gfd.labels.errors import LabelError
from gfd.labels.sanitise import sanitise
from gfd.model import DeviceModel

log = structlog.get_logger("gfd.labels")

TIMESTAMP = "nvidia.com/gfd.timestamp"
_CLASS_MODES = {0x030000: "graphics", 0x030200: "compute"}


def timestamp_labels(started_at: int | None) -> Labels:
    return {} if started_at is None else {TIMESTAMP: str(started_at)}


def machine_labels(model: DeviceModel) -> Labels:
    value = "unknown" if model.machine_type is None else sanitise(model.machine_type.strip())
    return {"nvidia.com/gpu.machine": value}


def version_labels(model: DeviceModel) -> Labels:
    parts = model.driver_version.split(".")
    if len(parts) not in (2, 3):
        raise LabelError(
            f'error getting driver version: Version "{model.driver_version}" does not match format "X.Y[.Z]"'
        )
    major, minor = parts[0], parts[1]
    rev = parts[2] if len(parts) == 3 else ""
    cuda_major = model.cuda_driver_version // 1000
    cuda_minor = model.cuda_driver_version % 1000 // 10
    return {
        "nvidia.com/cuda.driver.major": major,
        "nvidia.com/cuda.driver.minor": minor,
        "nvidia.com/cuda.driver.rev": rev,
        "nvidia.com/cuda.driver-version.major": major,
        "nvidia.com/cuda.driver-version.minor": minor,
        "nvidia.com/cuda.driver-version.revision": rev,
        "nvidia.com/cuda.driver-version.full": model.driver_version,
        "nvidia.com/cuda.runtime.major": str(cuda_major),
        "nvidia.com/cuda.runtime.minor": str(cuda_minor),
        "nvidia.com/cuda.runtime-version.major": str(cuda_major),
        "nvidia.com/cuda.runtime-version.minor": str(cuda_minor),
        "nvidia.com/cuda.runtime-version.full": f"{cuda_major}.{cuda_minor}",
    }


def mode_labels(model: DeviceModel) -> Labels:
    """compute/graphics from the PCI class of the top-level GPUs; anything unclear is `unknown`."""
    classes = {g.pci_class for g in model.gpus}
    if len(classes) > 1:
        log.info("multiple PCI classes detected on the node", classes=sorted(map(str, classes)))
    only = classes.pop() if len(classes) == 1 else None
    return {"nvidia.com/gpu.mode": "unknown" if only is None else _CLASS_MODES.get(only, "unknown")}


def imex_labels(model: DeviceModel) -> Labels:
    attached = [g.fabric for g in model.gpus if g.fabric is not None]
    if not attached:
        return {}
    if len({f.cluster_uuid for f in attached}) > 1:
        log.warning("Cluster UUIDs are non-unique")
        return {}
    if len({f.clique_id for f in attached}) > 1:
        log.warning("Clique IDs are non-unique")
        return {}
    return {"nvidia.com/gpu.clique": f"{attached[0].cluster_uuid}.{attached[0].clique_id}"}


def vgpu_labels(model: DeviceModel) -> Labels:
    if model.vgpu is None:
        return {}
    labels = {"nvidia.com/vgpu.present": str(model.vgpu.present).lower()}
    if model.vgpu.host_driver_version is not None:
        labels["nvidia.com/vgpu.host-driver-version"] = model.vgpu.host_driver_version
        labels["nvidia.com/vgpu.host-driver-branch"] = model.vgpu.host_driver_branch or ""
    return labels
