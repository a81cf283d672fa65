"""One discovery pass: NVML + sysfs facts gathered into a DeviceModel."""

from __future__ import annotations

from gfd.discovery import nvml
from gfd.discovery.errors import DiscoveryError
from gfd.discovery.sysfs import PciFacts, VgpuParseError, identify_lost, read_machine_type, scan_vgpu
from gfd.discovery.vfio import UNKNOWN_DRIVER, read_vfio_gpus
from gfd.model import DeviceModel, Gpu, LostGpu


def read_node(reader: nvml.NvmlReader | None, host_root: str, machine_type_file: str,
              topology: bool = False) -> DeviceModel:
    """Read the node through NVML. Without an NVML reader the model has no GPUs (upstream's null manager)."""
    gpus, lost = reader.read_gpus(PciFacts(host_root)) if reader is not None else ((), ())
    # Upstream reads versions and the machine type only when there is a GPU to label.
    driver, cuda = reader.read_versions() if reader is not None and gpus else ("", 0)
    lost = identify_lost(lost, reader.device_count, host_root) if reader is not None else ()
    return _model(gpus, driver, cuda, host_root, machine_type_file, reader, topology, lost)


def read_vfio_node(host_root: str, machine_type_file: str) -> DeviceModel:
    """Read GPUs bound to vfio-pci from sysfs (no NVML)."""
    gpus = read_vfio_gpus(host_root)
    return _model(gpus, UNKNOWN_DRIVER if gpus else "", 0, host_root, machine_type_file, None, False)


def _model(gpus: tuple[Gpu, ...], driver: str, cuda: int, host_root: str, machine_type_file: str,
           reader: nvml.NvmlReader | None, topology: bool, lost: tuple[LostGpu, ...] = ()) -> DeviceModel:
    try:
        vgpu = scan_vgpu(host_root)
    except VgpuParseError as e:
        raise DiscoveryError(f"error creating vGPU labeler: {e}") from e
    return DeviceModel(
        driver_version=driver,
        cuda_driver_version=cuda,
        gpus=gpus,
        machine_type=read_machine_type(host_root, machine_type_file) if gpus else None,
        vgpu=vgpu,
        links=reader.read_links(gpus) if reader is not None and topology and len(gpus) > 1 else (),
        lost_gpus=lost,
    )
