"""The `vfio` discovery back-end: GPUs bound to vfio-pci for passthrough, found in sysfs without NVML.

As upstream (go-nvlib nvpci): NVIDIA display/3D controllers that are not SR-IOV virtual functions and are
bound to vfio-pci; the name comes from the PCI-ID database, compute capability is -1/-1, the driver version
`unknown.unknown.unknown`, CUDA 0.0, and the memory label carries upstream's quirk: the summed 64-bit BAR
sizes in bytes, rounded up to a power of two (not MiB).
"""

from __future__ import annotations

import os

import structlog

from gfd.discovery.sysfs import NVIDIA_VENDOR, PCI_DEVICES, PciFacts, host_path, read_attribute
from gfd.model import Gpu

log = structlog.get_logger("gfd.discovery")

GPU_CLASSES = (0x030000, 0x030200)
PCI_IDS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
_MEM_64 = 0x00100000  # IORESOURCE_MEM_64 in the sysfs `resource` flags
UNKNOWN_DRIVER = "unknown.unknown.unknown"


def read_vfio_gpus(host_root: str) -> tuple[Gpu, ...]:
    base = os.path.join(host_root, PCI_DEVICES)
    names = _device_names(host_root)
    facts = PciFacts(host_root)
    gpus: list[Gpu] = []
    for address in sorted(os.listdir(base)):
        path = os.path.join(base, address)
        if _read(path, "vendor") != NVIDIA_VENDOR:
            continue
        pci_class = int(_read(path, "class") or "0", 16)
        if pci_class not in GPU_CLASSES or os.path.exists(os.path.join(path, "physfn")):
            continue
        driver = os.path.basename(os.path.realpath(os.path.join(path, "driver"))) \
            if os.path.exists(os.path.join(path, "driver")) else ""
        if driver != "vfio-pci":
            log.info("skipping NVIDIA GPU not bound to vfio-pci", address=address, driver=driver or None)
            continue
        device = int(_read(path, "device") or "0", 16)
        bus_id = f"0000{address}".upper()
        gpus.append(Gpu(
            index=len(gpus), uuid="", name=names.get(device, f"Device {device:04x}"),
            memory_mib=_bar_bytes(path), compute_capability=(-1, -1), architecture="unknown", brand="unknown",
            pci_bus_id=bus_id, pci_device_id=(device << 16) | 0x10DE, minor_number=None,
            numa_node=facts.numa_node(bus_id), pci_class=pci_class, mig_capable=False, mig_enabled=False,
        ))
    return tuple(gpus)


def _read(path: str, name: str) -> str:
    """An attribute of a PCI function; "" when absent (e.g. `resource` on an odd function)."""
    try:
        return read_attribute(os.path.join(path, name))
    except OSError:
        return ""


def _bar_bytes(path: str) -> int:
    """Sum of the 64-bit memory BARs, rounded up to a power of two (upstream's memory figure for vfio)."""
    total = 0
    for line in _read(path, "resource").splitlines():
        start, end, flags = (int(v, 16) for v in line.split())
        if start and flags & _MEM_64:
            total += end - start + 1
    return 1 << (total - 1).bit_length() if total else 0


def _device_names(host_root: str) -> dict[int, str]:
    """NVIDIA device names from the PCI-ID database (the first of the usual paths that exists)."""
    for candidate in PCI_IDS:
        path = host_path(host_root, candidate)
        if os.path.exists(path):
            return _parse_pci_ids(path)
    log.warning("no PCI-ID database found; GPUs are named by device id", looked_in=list(PCI_IDS))
    return {}


def _parse_pci_ids(path: str) -> dict[int, str]:
    names: dict[int, str] = {}
    in_nvidia = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            if not line.startswith("\t"):
                in_nvidia = line.lower().startswith("10de ")
            elif in_nvidia and not line.startswith("\t\t"):
                device, _, name = line.strip().partition(" ")
                names[int(device, 16)] = name.strip()
    return names
