"""Host facts a ResourceSlice carries that the device model does not: each GPU's PCIe root complex
(`resource.kubernetes.io/pcieRoot`), read from where the kernel puts the device in its sysfs tree."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import structlog

from gfd.discovery.sysfs import PCI_DEVICES, host_path, sysfs_address

log = structlog.get_logger("plugin.dra")

# A root complex in the sysfs device path: /sys/devices/pci0000:00/0000:00:01.0/0000:07:00.0
_ROOT = re.compile(r"pci[0-9a-f]{4}:[0-9a-f]{2}")


def pcie_root(bus_id: str, host_root: str = "") -> str | None:
    """`pci<domain>:<bus>` of the root complex above the device with NVML's `bus_id`, None (logged) when sysfs
    cannot tell (no symlink there: a simulated or unusual /sys)."""
    link = host_path(host_root, os.path.join("/", PCI_DEVICES, sysfs_address(bus_id)))
    try:
        target = os.readlink(link)
    except OSError as e:
        log.debug("PCIe root unknown", bus_id=bus_id, error=str(e))
        return None
    roots = [part for part in target.split("/") if _ROOT.fullmatch(part)]
    return roots[0] if roots else None


def pcie_roots(bus_ids: Iterable[str], host_root: str = "") -> dict[str, str]:
    """The known roots of the GPUs with NVML's `bus_ids`, by bus id as given."""
    found = {b: pcie_root(b, host_root) for b in bus_ids}
    return {b: root for b, root in found.items() if root is not None}
