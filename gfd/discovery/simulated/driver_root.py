"""A simulated driver root (`/driver-root` in the plugin's container): the driver's libraries with their
soname links and linker cache, binaries, GSP firmware, the persistenced socket and the device nodes.

Sources for the tables: the NVIDIA Linux driver README, "Installed Components" (library names and sonames,
binaries, `/lib/firmware/nvidia/<version>/gsp_*.bin`); glibc `sysdeps/generic/dl-cache.h` for the cache
layout, which a test checks against glibc's own reader (`ldconfig -p -C`). Device nodes are empty regular
files: creating character devices needs privileges, and nothing here may touch the real /dev.
"""

from __future__ import annotations

import os
import platform
import struct

from gfd.discovery.simulated.profiles import SimNode

# (library, soname); None: the soname is the versioned file name itself.
LIBRARIES = (("libcuda", "libcuda.so.1"), ("libcudadebugger", "libcudadebugger.so.1"),
             ("libnvidia-ml", "libnvidia-ml.so.1"), ("libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1"),
             ("libnvidia-nvvm", "libnvidia-nvvm.so.4"), ("libnvidia-cfg", "libnvidia-cfg.so.1"),
             ("libnvidia-opencl", "libnvidia-opencl.so.1"), ("libnvidia-allocator", "libnvidia-allocator.so.1"),
             ("libnvidia-gpucomp", None), ("libnvidia-pkcs11-openssl3", None))
# Development links (`-lcuda`, `-lnvidia-ml`) a driver install has beside the sonames: Ubuntu's driver packages
# and NVIDIA's mock driver root (k8s-test-infra) list libcuda.so -> libcuda.so.1, libnvidia-ml.so -> .so.1.
DEV_LINKS = ("libcuda", "libnvidia-ml")
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")
FIRMWARE = ("gsp_ga10x.bin", "gsp_tu10x.bin")
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_ARCH = {"aarch64": ("aarch64-linux-gnu", 0x0A03)}.get(platform.machine(), ("x86_64-linux-gnu", 0x0303))


def materialise_driver_root(node: SimNode, root: str, cap_minors: dict[str, int]) -> None:
    version = node.driver_version
    libdir = f"usr/lib/{_ARCH[0]}"
    os.makedirs(os.path.join(root, libdir), exist_ok=True)
    entries = []
    for name, soname in LIBRARIES:
        filename = f"{name}.so.{version}"
        _touch(os.path.join(root, libdir, filename))
        if soname is not None:
            _symlink(filename, os.path.join(root, libdir, soname))
        if name in DEV_LINKS:
            _symlink(soname or filename, os.path.join(root, libdir, f"{name}.so"))
        entries.append((soname or filename, f"/{libdir}/{soname or filename}"))
    entries.append(("libc.so.6", f"/lib/{_ARCH[0]}/libc.so.6"))  # not the driver's: must be left out
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc/ld.so.cache"), "wb") as f:
        f.write(linker_cache(entries, _ARCH[1]))
    for binary in BINARIES:
        _touch(os.path.join(root, "usr/bin", binary), 0o755)
    for firmware in FIRMWARE:
        _touch(os.path.join(root, "lib/firmware/nvidia", version, firmware))
    _touch(os.path.join(root, "run/nvidia-persistenced/socket"))
    _symlink("../run", os.path.join(root, "var/run"))
    for control in CONTROL_NODES:
        _touch(os.path.join(root, "dev", control))
    for gpu in node.gpus:
        _touch(os.path.join(root, "dev", f"nvidia{gpu.minor}"))
        for mig in gpu.mig:
            base = f"gpu{gpu.minor}/gi{mig.gi_id}"
            for key in (f"{base}/access", f"{base}/ci{mig.ci_id}/access"):
                if key in cap_minors:
                    _touch(os.path.join(root, "dev/nvidia-caps", f"nvidia-cap{cap_minors[key]}"))


def linker_cache(entries: list[tuple[str, str]], flags: int) -> bytes:
    """glibc's new-format cache (dl-cache.h): header, 24-byte entries, then the strings they point at."""
    header_size, entry_size = 48, 24
    strings = bytearray()
    offsets = []
    base = header_size + entry_size * len(entries)
    for key, value in entries:
        key_at = base + len(strings)
        strings += key.encode() + b"\0"
        value_at = base + len(strings)
        strings += value.encode() + b"\0"
        offsets.append((key_at, value_at))
    out = bytearray(struct.pack("<20sIIB3xI12x", b"glibc-ld.so.cache1.1", len(entries), len(strings), 0, 0))
    for key_at, value_at in offsets:
        out += struct.pack("<iIIIQ", flags, key_at, value_at, 0, 0)
    return bytes(out + strings)


def _touch(path: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass
    os.chmod(path, mode)


def _symlink(target: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.lexists(path):
        os.symlink(target, path)
