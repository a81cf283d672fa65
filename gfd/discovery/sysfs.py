"""Host facts outside NVML: PCI class codes, the vGPU PCI capability scan, the machine-type file.

Every path is resolved under `host_root` so a simulated node can supply its own /sys tree.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import NamedTuple

import structlog

from gfd.config.errors import ConfigError
from gfd.config.reading import read_text
from gfd.model import LostGpu, Vgpu

log = structlog.get_logger("gfd.discovery")

PCI_DEVICES = "sys/bus/pci/devices"
DRIVER_GPUS = "proc/driver/nvidia/gpus"
MACHINE_TYPE_LIMIT = 4096
NVIDIA_VENDOR = "0x10de"
_CAP_VENDOR_SPECIFIC = 0x09
# What the host driver writes into its PCI capability (e.g. 460.16, r460_00), validated where it is read.
_HOST_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
_HOST_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class VgpuParseError(Exception):
    """A vGPU capability whose host-driver record cannot be parsed (fatal upstream)."""


# The NVIDIA driver's device nodes (nvidia-modprobe creates them): one per GPU, named by its minor number,
# and the control nodes, of which nvidiactl and nvidia-uvm are there on every working node.
GPU_NODE = "/dev/nvidia{}"
REQUIRED_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm")
CONTROL_DEVICES = (*REQUIRED_CONTROL_DEVICES, "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


def host_path(host_root: str, path: str) -> str:
    """`path` under `host_root` ("" or "/" for this machine's own)."""
    return os.path.join(host_root, path.lstrip("/")) if host_root not in ("", "/") else path


def device_root(host_root: str, container_driver_root: str) -> str:
    """Where /dev is: under a driver container's root when that holds the device nodes, else the host root
    (upstream's rule for IMEX channels, device specs and CDI)."""
    driver = host_path(host_root, container_driver_root)
    return driver if os.path.isdir(os.path.join(driver, "dev")) else host_root


def read_machine_type(host_root: str, path: str) -> str | None:
    """The raw machine-type file content; None for an empty path or an unreadable file (warned). Read
    bounded, from a regular file only: a FIFO or /dev/zero given here must not hang or exhaust memory."""
    if not path:
        return None
    # Only /sys paths are re-rooted: a user's own file is read as given.
    resolved = host_path(host_root, path) if path.startswith("/sys/") else path
    try:
        return read_text(resolved, f"machine type file {path}", limit=MACHINE_TYPE_LIMIT)
    except ConfigError as e:
        log.warning("error getting machine type", path=path, error=str(e))
        return None


def read_attribute(path: str) -> str:
    """A small sysfs attribute, stripped. os.read of a few bytes: several times cheaper than a
    text-mode open() on these per-GPU paths. OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


class PciFacts:
    """Per-GPU facts from /sys/bus/pci/devices/<address>: the PCI class (gpu.mode) and the NUMA node
    (the device plugin's topology hint, read where upstream reads it)."""

    def __init__(self, host_root: str) -> None:
        self.host_root = host_root

    def _read(self, bus_id: str, name: str) -> str:
        return read_attribute(os.path.join(self.host_root, PCI_DEVICES, sysfs_address(bus_id), name))

    def pci_class(self, bus_id: str) -> int | None:
        """The 24-bit PCI class; None (warned) when sysfs cannot tell."""
        try:
            return int(self._read(bus_id, "class"), 16)
        except (OSError, ValueError) as e:
            log.warning("error getting PCI class", bus_id=bus_id, error=str(e))
            return None

    def numa_node(self, bus_id: str) -> int | None:
        """None when the file is missing or negative (no NUMA affinity), as upstream."""
        try:
            node = int(self._read(bus_id, "numa_node"))
        except (OSError, ValueError):
            return None
        return node if node >= 0 else None


def sysfs_address(bus_id: str) -> str:
    """NVML bus ids carry an 8-digit domain (`00000000:07:00.0`); sysfs uses 4 (`0000:07:00.0`)."""
    domain, rest = bus_id.lower().split(":", 1)
    return f"{int(domain, 16):04x}:{rest}"


def scan_vgpu(host_root: str) -> Vgpu | None:
    """Upstream internal/vgpu: look for the `VF` vendor capability on every NVIDIA PCI function.

    None means the scan failed (upstream then emits no vgpu labels); VgpuParseError is fatal.
    """
    base = os.path.join(host_root, PCI_DEVICES)
    try:
        addresses = sorted(os.listdir(base))
        present = False
        version = branch = None
        for address in addresses:
            path = os.path.join(base, address)
            if read_attribute(os.path.join(path, "vendor")) != NVIDIA_VENDOR:
                continue  # (read as bytes: a garbled vendor file is simply not NVIDIA's)
            with open(os.path.join(path, "config"), "rb") as f:
                config = f.read()
            if len(config) < 256:
                raise OSError(f"{address}: PCI config space shorter than 256 bytes ({len(config)})")
            capability = _vendor_capability(config)
            if capability is None or len(capability) < 5 or capability[3:5] != b"VF":
                continue
            present = True
            version, branch = _host_driver(capability, address)
    except OSError as e:
        log.error("unable to get vGPU devices", error=str(e))
        return None
    return Vgpu(present=present, host_driver_version=version, host_driver_branch=branch)


def _vendor_capability(config: bytes) -> bytes | None:
    if not config[0x06] & 0x10:
        return None
    pos = config[0x34]
    seen: set[int] = set()
    while pos and pos not in seen and pos + 2 < len(config):
        seen.add(pos)
        cap_id, nxt, length = config[pos], config[pos + 1], config[pos + 2]
        if cap_id == 0xFF:
            return None
        if cap_id == _CAP_VENDOR_SPECIFIC:
            return config[pos : pos + length]
        pos = nxt
    return None


def _host_driver(capability: bytes, address: str) -> tuple[str, str]:
    pos = 5
    while pos + 1 < len(capability):
        if capability[pos] == 0:
            if len(capability) - pos < 22:
                break
            version = capability[pos + 2 : pos + 12].rstrip(b"\0").decode("ascii", "replace")
            branch = capability[pos + 12 : pos + 22].rstrip(b"\0").decode("ascii", "replace")
            if not _HOST_VERSION.fullmatch(version) or not _HOST_BRANCH.fullmatch(branch):
                break  # bytes that are not a host-driver record: a parse error, as upstream's
            return version, branch
        step = capability[pos + 1]
        if step == 0:
            break
        pos += step
    raise VgpuParseError(f"unable to parse vGPU host driver info of {address}")


def identify_lost(lost: tuple[LostGpu, ...], nvml_count: int, host_root: str) -> tuple[LostGpu, ...]:
    """Complete lost GPUs from the kernel driver's `/proc/driver/nvidia/gpus/<bus>/information`
    (`GPU UUID:`, `Device Minor:`), which stays readable when NVML has lost the GPU. NVML enumerates
    GPUs in PCI bus order, so entry i is NVML index i when the driver lists as many GPUs as NVML."""
    if not lost:
        return lost
    entries = _driver_gpus(host_root)
    by_uuid = {e.uuid: e for e in entries}
    done = []
    for gpu in lost:
        entry = by_uuid.get(gpu.uuid) if gpu.uuid else (entries[gpu.index] if len(entries) == nvml_count else None)
        if entry is None:
            log.warning("lost GPU not found in the driver's /proc entries", index=gpu.index)
            done.append(gpu)
        else:
            done.append(dataclasses.replace(gpu, uuid=entry.uuid, pci_bus_id=entry.bus_id, minor_number=entry.minor))
    return tuple(done)


class _DriverEntry(NamedTuple):
    uuid: str
    bus_id: str
    minor: int


def _driver_gpus(host_root: str) -> list[_DriverEntry]:
    base = os.path.join(host_root, DRIVER_GPUS)
    try:
        addresses = sorted(os.listdir(base))
    except OSError:
        return []
    entries = []
    for address in addresses:
        try:
            fields = dict(line.partition(":")[::2] for line in
                          read_attribute(os.path.join(base, address, "information")).splitlines())
            minor = int(fields.get("Device Minor", "").strip())
        except (OSError, ValueError):
            continue
        entries.append(_DriverEntry(fields.get("GPU UUID", "").strip(), address, minor))
    return entries
