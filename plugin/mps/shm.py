"""`mps-control-daemon mount-shm` (the init container): a fresh tmpfs at `<root>/shm`, shared by the MPS
servers and their clients as their /dev/shm, sized as upstream (cmd/mps-control-daemon/mount/mount-shm.go):
half of MemTotal, `rw,nosuid,nodev,noexec,relatime`. mount(2) and umount2(2) through libc, no shelling out."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from plugin.mps import MpsError

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RELATIME = 0x2, 0x4, 0x8, 0x200000
MNT_DETACH = 0x2
FALLBACK_SIZE = "65536k"  # upstream's, when /proc/meminfo cannot be read


def shm_size(meminfo: str = "/proc/meminfo") -> str:
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    value, unit = line.split()[1:3]
                    return f"{int(value) // 2}{unit[0].lower()}"
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_SIZE


def mount_shm(shm: str) -> str:
    """Unmount what is there (a restart), then mount the tmpfs; the size used."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if os.path.ismount(shm) and libc.umount2(shm.encode(), MNT_DETACH) != 0:
        raise MpsError(f"error unmounting {shm}: {os.strerror(ctypes.get_errno())}")
    os.makedirs(shm, 0o755, exist_ok=True)
    size = shm_size()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    if libc.mount(b"shm", shm.encode(), b"tmpfs", flags, f"size={size}".encode()) != 0:
        raise MpsError(f"error mounting tmpfs at {shm}: {os.strerror(ctypes.get_errno())} "
                       "(the init container must be privileged)")
    return size
