"""Materialise a simulated node's /sys (PCI functions, DMI product name) in a directory.

The real sysfs readers then run unchanged against it, vGPU capability walk included.
"""

from __future__ import annotations

import os

from gfd.discovery.simulated.driver_root import materialise_driver_root
from gfd.discovery.simulated.profiles import SimGpu, SimNode
from gfd.discovery.sysfs import DRIVER_GPUS, PCI_DEVICES

_CAP_POINTER = 0x40


def pci_config(vgpu: dict[str, str] | None) -> bytes:
    """256 bytes of PCI config space with a capability list; a vGPU adds the `VF` vendor capability."""
    config = bytearray(256)
    config[0:2] = (0x10DE).to_bytes(2, "little")
    config[0x06] = 0x10  # status: capability list present
    config[0x34] = _CAP_POINTER
    if vgpu is None:
        config[_CAP_POINTER : _CAP_POINTER + 3] = bytes([0x01, 0x00, 0x08])  # power management only
        return bytes(config)
    record = bytes([0x00, 22]) + _field(vgpu["version"]) + _field(vgpu["branch"])
    capability = bytes([0x09, 0x00, 5 + len(record)]) + b"VF" + record
    config[_CAP_POINTER : _CAP_POINTER + len(capability)] = capability
    return bytes(config)


def _field(text: str) -> bytes:
    return text.encode("ascii")[:10].ljust(10, b"\0")


def _address(bus_id: str) -> str:
    domain, rest = bus_id.lower().split(":", 1)
    return f"{int(domain, 16):04x}:{rest}"


def materialise(node: SimNode, root: str) -> None:
    devices = os.path.join(root, PCI_DEVICES)
    os.makedirs(devices, exist_ok=True)
    for f in node.extra_pci_functions:
        _function(devices, f["address"], f.get("vendor", "0x10de"), int(f.get("class", 0x040300)), f.get("vgpu"), -1)
    drivers = os.path.join(root, "sys/bus/pci/drivers")
    for driver, gpus in (("nvidia", node.gpus), ("vfio-pci", node.vfio_gpus)):
        os.makedirs(os.path.join(drivers, driver), exist_ok=True)
        for gpu in gpus:
            path = _function(devices, _address(gpu.bus_id), "0x10de", gpu.pci_class, gpu.vgpu, gpu.numa_node)
            _write(os.path.join(path, "device"), f"0x{gpu.pci_device_id >> 16:04x}\n".encode())
            _write(os.path.join(path, "resource"), _resources(gpu.bars))
            if not os.path.lexists(os.path.join(path, "driver")):
                os.symlink(os.path.join(drivers, driver), os.path.join(path, "driver"))
    ids = os.path.join(root, "usr/share/misc")
    os.makedirs(ids, exist_ok=True)
    names = {g.pci_device_id >> 16: g.pci_name for g in (*node.gpus, *node.vfio_gpus) if g.pci_name}
    _write(os.path.join(ids, "pci.ids"), ("10de  NVIDIA Corporation\n" + "".join(
        f"\t{device:04x}  {name}\n" for device, name in sorted(names.items()))).encode())
    dmi = os.path.join(root, "sys/class/dmi/id")
    os.makedirs(dmi, exist_ok=True)
    _write(os.path.join(dmi, "product_name"), f"{node.machine}\n".encode())
    for gpu in node.gpus:
        entry = os.path.join(root, DRIVER_GPUS, _address(gpu.bus_id))
        os.makedirs(entry, exist_ok=True)
        _write(os.path.join(entry, "information"), driver_information(gpu).encode())
    caps = os.path.join(root, "proc/driver/nvidia-caps")
    os.makedirs(caps, exist_ok=True)
    minors = mig_minors(len(node.gpus))
    _write(os.path.join(caps, "mig-minors"), minors.encode())
    cap_minors = {key: int(minor) for key, _, minor in (line.rpartition(" ") for line in minors.splitlines())}
    materialise_driver_root(node, os.path.join(root, "driver-root"), cap_minors)


def _function(devices: str, address: str, vendor: str, pci_class: int, vgpu: dict[str, str] | None,
              numa_node: int) -> str:
    path = os.path.join(devices, address)
    os.makedirs(path, exist_ok=True)
    _write(os.path.join(path, "vendor"), f"{vendor}\n".encode())
    _write(os.path.join(path, "class"), f"0x{pci_class:06x}\n".encode())
    _write(os.path.join(path, "config"), pci_config(vgpu))
    _write(os.path.join(path, "numa_node"), f"{numa_node}\n".encode())
    return path


def _resources(bars: list[int]) -> bytes:
    """sysfs `resource` lines (start end flags): a 32-bit BAR0, then the 64-bit prefetchable BARs."""
    lines = ["0x00000000fa000000 0x00000000faffffff 0x0000000000040200"]
    start = 0x38000000000
    for size in bars:
        lines.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x000000000014220c")
        start += size
    return ("\n".join(lines) + "\n").encode()


def driver_information(gpu: SimGpu) -> str:
    """The kernel driver's /proc/driver/nvidia/gpus/<bus>/information (layout as the driver prints it)."""
    return (f"Model: \t\t {gpu.name}\nIRQ:   \t\t 0\nGPU UUID: \t {gpu.uuid}\nVideo BIOS: \t ??.??.??.??.??\n"
            f"Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n"
            f"Bus Location: \t {_address(gpu.bus_id)}\nDevice Minor: \t {gpu.minor}\nGPU Excluded:\t No\n")


def mig_minors(gpus: int) -> str:
    """The driver's capability-minor table: config, monitor, then every GPU/GI/CI access file."""
    lines = ["config 1", "monitor 2"]
    minor = 3
    for gpu in range(gpus):
        for gi in range(15):
            lines.append(f"gpu{gpu}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(8):
                lines.append(f"gpu{gpu}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    return "\n".join(lines) + "\n"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
