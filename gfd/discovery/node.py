"""One discovery pass: NVML + sysfs facts gathered into a DeviceModel."""

from __future__ import annotations

from gfd.discovery import nvml
from gfd.discovery.sysfs import PciFacts, VgpuParseError, read_machine_type, scan_vgpu
from gfd.model import DeviceModel


def read_node(reader: nvml.NvmlReader | None, host_root: str, machine_type_file: str,
              topology: bool = False) -> DeviceModel:
    """Read the node. Without an NVML reader the model has no GPUs (upstream's null manager)."""
    gpus = reader.read_gpus(PciFacts(host_root)) if reader is not None else ()
    # Upstream reads versions and the machine type only when there is a GPU to label.
    driver, cuda = reader.read_versions() if reader is not None and gpus else ("", 0)
    try:
        vgpu = scan_vgpu(host_root)
    except VgpuParseError as e:
        raise nvml.DiscoveryError(f"error creating vGPU labeler: {e}") from None
    return DeviceModel(
        driver_version=driver,
        cuda_driver_version=cuda,
        gpus=gpus,
        machine_type=read_machine_type(host_root, machine_type_file) if gpus else None,
        vgpu=vgpu,
        nvml_available=reader is not None,
        nvml_errors=tuple(reader.errors) if reader is not None else (),
        links=reader.read_links(gpus) if reader is not None and topology and len(gpus) > 1 else (),
    )
